"""The dataset preparers (hoitool.datasets.*): raw layouts -> manifest, boxes, warnings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hoitool.boxes.jsonl import read_boxes_jsonl
from hoitool.datasets.cad120 import KINECT, OBJECT_CLASSES, Intrinsics, person_box, prepare_cad120
from hoitool.datasets.charades import prepare_charades, read_csv
from hoitool.datasets.common import hold_out_groups, stored_path, stratified_split
from hoitool.datasets.folder import prepare_folder
from hoitool.datasets.ssv2 import prepare_ssv2
from hoitool.errors import UsageError
from hoitool.manifest import Manifest

SHARED_CHARADES = Path(__file__).resolve().parents[2] / "shared" / "data" / "charades"
CHARADES_HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


# -- fake raw layouts ---------------------------------------------------------
def write_charades_root(root: Path, train_rows: list[str], test_rows: list[str], num_classes: int = 157) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Charades_v1_classes.txt").write_text("".join(f"c{i:03d} Class number {i}\n" for i in range(num_classes)))
    (root / "Charades_v1_train.csv").write_text(CHARADES_HEADER + "".join(row + "\n" for row in train_rows))
    (root / "Charades_v1_test.csv").write_text(CHARADES_HEADER + "".join(row + "\n" for row in test_rows))
    return root


def charades_row(video: str, subject: str, actions: str = "", length: str = "10.0") -> str:
    return f'{video},{subject},Kitchen,,6,Yes,"A person, quoted.",cup;dish,"Says ""hi"";then leaves",{actions},{length}'


def skeleton_line(frame: int, joints: np.ndarray, confidence: float = 1.0) -> str:
    """One CAD-120 skeleton line: 11 joints with orientation, 4 with position only."""
    values = [str(frame)]
    for index, (x, y, z) in enumerate(joints):
        if index < 11:
            values += ["1", "0", "0", "0", "1", "0", "0", "0", "1", "1"]  # orientation + its confidence
        values += [f"{x:.3f}", f"{y:.3f}", f"{z:.3f}", str(confidence)]
    return ",".join(values) + ","


JOINTS = np.stack([np.linspace(-200, 200, 15), np.linspace(-400, 400, 15), np.full(15, 2000.0)], axis=1)

CAD_VIDEOS = {  # subject -> activity -> [(video id, objects)]
    "Subject1": {"having_meal": [("0510175411", {1: "bowl", 2: "cup"})], "taking_food": [("0510175412", {1: "box"})]},
    "Subject3": {
        "having_meal": [("1204150645", {1: "plate"}), ("1204150646", {1: "cup"})],
        "taking_food": [("1204150647", {1: "microwave"}), ("0505003751", {1: "cup"})],
    },
}


def write_cad120_root(root: Path, frames: int = 3) -> Path:
    for subject, activities in CAD_VIDEOS.items():
        for activity, videos in activities.items():
            annotations = root / f"{subject}_annotations" / activity
            annotations.mkdir(parents=True)
            label_lines, segment_lines = [], []
            for video, objects in videos:
                objects_text = "".join(f"{key}:{value}," for key, value in objects.items())
                label_lines.append(f"{video},{activity},{subject},{objects_text}")
                segment_lines += [f"{video},1,2,reaching, movable", f"{video}, 3, {frames}, moving,stationary"]
                for key in objects:
                    rows = [
                        f"{frame},{key},{10 * key},{20},{10 * key + 30},{60},0,0,0,0,0,0," for frame in range(1, frames)
                    ]
                    rows.append(f"{frames},{key},0,0,0,0,0,0,0,0,0,0,")  # not visible in the last frame
                    (annotations / f"{video}_obj{key}.txt").write_text("\n".join(rows) + "\n")
                (annotations / f"{video}.txt").write_text(
                    "\n".join(skeleton_line(frame, JOINTS) for frame in range(1, frames + 1)) + "\nEND\n"
                )
                (annotations / f"{video}_globalTransform.txt").write_text("1,0,0\n")
                images = root / f"{subject}_rgbd_images" / activity / video
                images.mkdir(parents=True)
                for frame in range(1, frames + 1):
                    (images / f"RGB_{frame}.png").write_bytes(b"")
            (annotations / "activityLabel.txt").write_text("\n".join(label_lines) + "\n")
            (annotations / "labeling.txt").write_text("\n".join(segment_lines) + "\n")
    return root


def write_ssv2_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    labels = {
        "Putting something onto something": "0",
        "Pushing something from left to right": "1",
        "Holding something": "2",
    }
    train = [
        {
            "id": "1",
            "label": "putting a cup onto a table",
            "template": "Putting [something] onto [something]",
            "placeholders": ["cup", "table"],
        },
        {"id": "2", "label": "holding pen", "template": "Holding [something]", "placeholders": ["pen"]},
        {
            "id": "3",
            "label": "pushing box",
            "template": "Pushing [something] from left to right",
            "placeholders": ["box"],
        },
    ]
    validation = [{"id": "10", "label": "holding cup", "template": "Holding [something]", "placeholders": ["cup"]}]
    files = {"labels": labels, "train": train, "validation": validation, "test": [{"id": "20"}, {"id": "21"}]}
    for name, data in files.items():
        (root / f"something-something-v2-{name}.json").write_text(json.dumps(data))
    for video in ("1", "2", "10", "20"):  # video 3 is missing
        (root / f"{video}.webm").write_bytes(b"")
    return root


# -- shared helpers -----------------------------------------------------------
def test_stored_path_is_relative_inside_out_and_absolute_outside(tmp_path):
    out = tmp_path / "out"
    assert stored_path(out / "videos" / "a.mp4", out) == "videos/a.mp4"
    assert stored_path(tmp_path / "raw" / "a.mp4", out) == str(tmp_path / "raw" / "a.mp4")
    assert stored_path(tmp_path / "outside.mp4", out) == str(tmp_path / "outside.mp4")  # prefix "out" is not inside


def test_hold_out_groups_is_deterministic_and_keeps_a_group():
    counts = {f"S{i:02d}": 10 for i in range(20)}
    held = hold_out_groups(counts, 0.1, seed=0)
    assert held == hold_out_groups(dict(reversed(list(counts.items()))), 0.1, seed=0)
    assert sum(counts[group] for group in held) == 20
    assert held != hold_out_groups(counts, 0.1, seed=1)
    assert hold_out_groups({"a": 5, "b": 5}, 0.9, seed=0) in ({"a"}, {"b"})
    assert hold_out_groups(counts, 0.0, seed=0) == set()
    assert hold_out_groups({"a": 1, "b": 1}, 0.1, seed=0) == set()  # one group would overshoot more than none
    with_big = {"big": 50, **counts}  # target 25: "big" would overshoot, two groups of 10 get closest
    assert sum(with_big[group] for group in hold_out_groups(with_big, 0.1, seed=0)) == 20
    with pytest.raises(UsageError):
        hold_out_groups(counts, 1.0, seed=0)


def test_stratified_split_cuts_each_class():
    keys = {f"{label}{i}": label for label in "ab" for i in range(10)}
    splits = stratified_split(keys, 0.2, 0.3, seed=0)
    for label in "ab":
        got = [splits[video] for video in keys if keys[video] == label]
        assert (got.count("train"), got.count("val"), got.count("test")) == (5, 2, 3)
    assert splits == stratified_split(dict(reversed(list(keys.items()))), 0.2, 0.3, seed=0)
    with pytest.raises(UsageError):
        stratified_split(keys, 0.5, 0.5, seed=0)


# -- Charades ------------------------------------------------------------------
@pytest.fixture
def real_charades(tmp_path):
    if not (SHARED_CHARADES / "Charades_v1_test.csv").is_file():
        pytest.skip(f"real Charades fixtures not found at {SHARED_CHARADES}")
    return SHARED_CHARADES


def test_charades_real_files(real_charades, tmp_path):
    root = tmp_path / "raw"
    videos = root / "Charades_v1_480"
    videos.mkdir(parents=True)
    for name in ("Charades_v1_classes.txt", "Charades_v1_test.csv"):
        (root / name).symlink_to(real_charades / name)
    # The two real mp4s: as themselves (train rows copied from list_file.csv), and one also
    # under the name of a real test-CSV video so the test split is not empty.
    (videos / "19UA5.mp4").symlink_to(real_charades / "19UA5.mp4")
    (videos / "S6MPZ.mp4").symlink_to(real_charades / "S6MPZ.mp4")
    (videos / "YSKX3.mp4").symlink_to(real_charades / "19UA5.mp4")
    for video in ("TRN01", "TRN02", "TRN03"):
        (videos / f"{video}.mp4").symlink_to(real_charades / "19UA5.mp4")
    listed = (real_charades / "list_file.csv").read_text().splitlines()[1:]
    (root / "Charades_v1_train.csv").write_text(
        CHARADES_HEADER
        + "\n".join(
            listed
            + [
                charades_row("TRN01", "SUBJ", "c000 0.0 1.0;c000 2.0 3.0;c156 1.0 9.5"),
                charades_row("TRN02", "SUBJ", ""),
                charades_row("TRN03", "OTHR", "c010 0.0 1.0", length=""),
            ]
        )
        + "\n"
    )

    manifest = prepare_charades(root, tmp_path / "out", val_fraction=0.3, seed=0)

    by_id = manifest.by_id()
    assert set(by_id) == {"19UA5", "S6MPZ", "YSKX3", "TRN01", "TRN02", "TRN03"}
    assert manifest.num_classes == 157 and manifest.multilabel
    assert manifest.classes[0] == "Holding some clothes"
    assert by_id["19UA5"].labels == [20, 26, 31, 106]
    assert by_id["YSKX3"].labels == [75, 76, 77, 79, 80] and by_id["YSKX3"].split == "test"
    assert by_id["YSKX3"].extra["length"] == 16.62
    assert sorted({action[0] for action in by_id["YSKX3"].extra["actions"]}) == by_id["YSKX3"].labels  # intervals
    assert by_id["YSKX3"].objects == ["bed", "blanket", "mattress", "pillow"]  # the real CSV's objects column
    assert by_id["TRN01"].objects == ["cup", "dish"]
    assert manifest.extra["ground_truth"]["test"] == str(root / "Charades_v1_test.csv")
    assert by_id["TRN01"].labels == [0, 156] and by_id["TRN02"].labels == []
    assert by_id["TRN03"].extra == {"length": None, "actions": [[10, 0.0, 1.0]]}  # [class, start, end] seconds
    assert by_id["TRN02"].extra["actions"] == []
    assert by_id["19UA5"].group == "18IT" and by_id["19UA5"].kind == "video"
    assert by_id["19UA5"].source == str(root / "Charades_v1_480" / "19UA5.mp4")  # outside OUT: absolute, symlink kept
    train_subjects = {v.group for v in manifest.videos if v.split == "train"}
    val_subjects = {v.group for v in manifest.videos if v.split == "val"}
    assert val_subjects and train_subjects and not val_subjects & train_subjects
    assert val_subjects == set(manifest.extra["split"]["val_subjects"])

    warnings = (tmp_path / "out" / "prepare_warnings.jsonl").read_text().splitlines()
    assert len(warnings) == 1863 - 1 == manifest.extra["skipped_videos"]
    assert json.loads(warnings[0])["reason"] == "video not found"
    loaded = Manifest.load(tmp_path / "out")
    assert loaded.source_path(loaded.by_id()["S6MPZ"]).is_file()


def test_charades_real_test_csv_parses(real_charades):
    rows = read_csv(real_charades / "Charades_v1_test.csv", 157)
    assert len(rows) == 1863 and len({row.id for row in rows}) == 1863
    assert any(not row.labels for row in rows)  # label-less test videos exist and are kept


def test_charades_frames_and_split_determinism(tmp_path):
    subjects = [f"S{i}" for i in range(10)]
    train = [charades_row(f"V{i:02d}", subjects[i % 10], "c001 0 1") for i in range(30)]
    root = write_charades_root(tmp_path / "raw", train, [charades_row("T00", "S0", "c002 0 1")], num_classes=3)
    for video in [f"V{i:02d}" for i in range(30)] + ["T00"]:
        folder = root / "Charades_v1_rgb" / video
        folder.mkdir(parents=True)
        for frame in range(1, 5):
            (folder / f"{video}-{frame:06d}.jpg").write_bytes(b"")
    for axis in "xy":  # flow images copied into a frame folder are not frames
        (root / "Charades_v1_rgb" / "V00" / f"V00-000001{axis}.jpg").write_bytes(b"")
    first = prepare_charades(root, tmp_path / "a", from_frames=True, val_fraction=0.2)
    second = prepare_charades(root, tmp_path / "b", from_frames=True, val_fraction=0.2)
    assert [(v.id, v.split) for v in first.sorted_videos()] == [(v.id, v.split) for v in second.sorted_videos()]
    video = first.by_id()["V00"]
    assert (video.kind, video.fps, video.num_frames) == ("frames", 24.0, 4)
    assert video.source == str(root / "Charades_v1_rgb" / "V00" / "V00-%06d.jpg")
    assert sum(v.split == "val" for v in first.videos) == 6  # 2 of 10 subjects, 3 videos each
    assert not (tmp_path / "a" / "prepare_warnings.jsonl").exists()


@pytest.mark.parametrize(
    "row, message",
    [
        (charades_row("V1", "S", "c001 0.0"), ":2: bad action 'c001 0.0'"),
        (charades_row("V1", "S", "c003 0 1"), ":2: action class c003 outside c000..c002"),
        (charades_row("V1", "S", "x001 0 1"), ":2: bad action"),
        (charades_row("V1", "S", "c001 0 1", length="long"), ":2: bad length 'long'"),
        ("V1,S", ":2: expected 11 fields"),
    ],
)
def test_charades_bad_csv_names_file_and_line(tmp_path, row, message):
    root = write_charades_root(tmp_path / "raw", [row], [], num_classes=3)
    with pytest.raises(UsageError, match=r"Charades_v1_train\.csv") as error:
        prepare_charades(root, tmp_path / "out")
    assert message in str(error.value) and "\n" not in str(error.value)


def test_charades_strict_fails_on_a_missing_video(tmp_path):
    root = write_charades_root(tmp_path / "raw", [charades_row("V1", "S", "c001 0 1")], [], num_classes=3)
    with pytest.raises(UsageError, match=r"V1\.mp4: video of 'V1' not found"):
        prepare_charades(root, tmp_path / "out", strict=True)
    with pytest.raises(UsageError, match="no usable videos"):  # skipping the only video leaves nothing
        prepare_charades(root, tmp_path / "out")


# -- CAD-120 -------------------------------------------------------------------
def test_person_box_projects_confident_joints():
    joints = np.concatenate([JOINTS, np.ones((15, 1))], axis=1)
    joints[0, 3] = 0  # an unconfident joint (the widest one) is ignored
    box = person_box(joints, Intrinsics(fx=500, fy=500, cx=320, cy=240), margin=0.0)
    x, y, z = JOINTS[1:, 0], JOINTS[1:, 1], JOINTS[1:, 2]
    expected = [
        320 + 500 * (x / z).min(),
        240 - 500 * (y / z).max(),
        320 + 500 * (x / z).max(),
        240 - 500 * (y / z).min(),
    ]
    np.testing.assert_allclose(box, expected, rtol=1e-5)
    padded = person_box(joints, Intrinsics(fx=500, fy=500, cx=320, cy=240), margin=0.5)
    assert padded[0] < box[0] and padded[2] > box[2]
    far_right = joints.copy()
    far_right[:, 0] += 10000
    assert person_box(far_right, KINECT, 0.1) is None
    assert person_box(np.zeros((15, 4)), KINECT, 0.1) is None


def test_cad120_fold(tmp_path):
    root = write_cad120_root(tmp_path / "raw")
    out = tmp_path / "out"
    manifest = prepare_cad120(root, out, fold="Subject1", val=0.5)

    assert manifest.classes == ["having_meal", "taking_food"] and not manifest.multilabel
    by_id = manifest.by_id()
    assert "0505003751" not in by_id
    assert set(by_id) == {"0510175411", "0510175412", "1204150645", "1204150646", "1204150647"}
    assert {v.id for v in manifest.videos if v.split == "test"} == {"0510175411", "0510175412"}
    assert sorted(v.split for v in manifest.videos if v.group == "Subject3") == ["train", "train", "val"]
    video = by_id["0510175411"]
    assert (video.kind, video.group, video.num_frames, video.labels) == ("frames", "Subject1", 3, [0])
    assert video.source == str(root / "Subject1_rgbd_images" / "having_meal" / "0510175411" / "RGB_%d.png")
    assert video.objects == ["bowl", "cup"] and video.extra["object_ids"] == [1, 2]
    assert video.annotations == "annotations.jsonl"
    assert video.extra["segments"] == [[0, 1, "reaching"], [2, 2, "moving"]]
    assert manifest.object_classes[-1] == "person" and manifest.extra["test_subject"] == "Subject1"
    warnings = [json.loads(line) for line in (out / "prepare_warnings.jsonl").read_text().splitlines()]
    assert [w["video"] for w in warnings] == ["0505003751"]

    boxes = read_boxes_jsonl(out / "annotations.jsonl")
    frames = boxes["0510175411"]
    assert sorted(frames) == [0, 1, 2]
    first = frames[0]
    assert first.is_person.tolist() == [True, False, False]
    assert first.labels.tolist() == [
        OBJECT_CLASSES.index("person"),
        OBJECT_CLASSES.index("bowl"),
        OBJECT_CLASSES.index("cup"),
    ]
    np.testing.assert_allclose(first.boxes[1], [10, 20, 40, 60])
    expected_person = person_box(np.concatenate([JOINTS, np.ones((15, 1))], axis=1), KINECT, 0.1)
    np.testing.assert_allclose(first.boxes[0], expected_person, atol=0.01)
    assert frames[2].is_person.tolist() == [True]  # objects are 0,0,0,0 in the last frame
    Manifest.load(out)  # what was written validates


def test_cad120_without_fold_and_subject_val(tmp_path):
    root = write_cad120_root(tmp_path / "raw")
    manifest = prepare_cad120(root, tmp_path / "out")
    assert {v.group for v in manifest.videos if v.split == "test"} == {"Subject3"}
    assert manifest.extra["fold"] is None and "no fold given" in manifest.extra["notes"][0]
    with pytest.raises(UsageError, match="no training videos left"):
        prepare_cad120(root, tmp_path / "out2", fold="Subject1", val="Subject3")
    with pytest.raises(UsageError, match="--fold 'Subject9': not a subject"):
        prepare_cad120(root, tmp_path / "out3", fold="Subject9")


def test_cad120_missing_frames_and_bad_object_file(tmp_path):
    root = write_cad120_root(tmp_path / "raw")
    for png in (root / "Subject3_rgbd_images" / "taking_food" / "1204150647").iterdir():
        png.unlink()
    manifest = prepare_cad120(root, tmp_path / "out")
    assert "1204150647" not in manifest.by_id() and manifest.extra["skipped_videos"] == 2
    with pytest.raises(UsageError, match="RGB_1.png: frames of '1204150647' not found"):
        prepare_cad120(root, tmp_path / "out", strict=True)

    bad = root / "Subject1_annotations" / "having_meal" / "0510175411_obj2.txt"
    bad.write_text("1,2,10,20,30\n")
    with pytest.raises(UsageError, match=r"0510175411_obj2\.txt:1: expected 12 fields"):
        prepare_cad120(root, tmp_path / "out")


# -- Something-Something v2 -------------------------------------------------------
def test_ssv2(tmp_path):
    root = write_ssv2_root(tmp_path / "raw")
    manifest = prepare_ssv2(root, tmp_path / "out")
    assert manifest.classes == [
        "Putting something onto something",
        "Pushing something from left to right",
        "Holding something",
    ]
    assert {(v.id, v.split, tuple(v.labels)) for v in manifest.videos} == {
        ("1", "train", (0,)),
        ("2", "train", (2,)),
        ("10", "val", (2,)),
    }
    assert manifest.extra["omitted_test_videos"] == 2 and manifest.extra["skipped_videos"] == 1
    assert "20" not in manifest.by_id()  # test videos have no label: left out, never given a fake one
    assert manifest.by_id()["1"].objects == ["cup", "table"] and manifest.by_id()["10"].objects == ["cup"]


def test_ssv2_unknown_template(tmp_path):
    root = write_ssv2_root(tmp_path / "raw")
    path = root / "something-something-v2-validation.json"
    path.write_text(json.dumps([{"id": "10", "template": "Juggling [something]"}]))
    with pytest.raises(UsageError, match=r"validation\.json: entry 0 \(id 10\): template 'Juggling \[something\]'"):
        prepare_ssv2(root, tmp_path / "out")


# -- folder of videos -----------------------------------------------------------
def test_folder_class_subfolders(tmp_path):
    root = tmp_path / "raw"
    for label in ("jump", "run"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            (root / label / f"{label}{i}.mp4").write_bytes(b"")
        (root / label / "notes.txt").write_text("not a video")
    (root / "run" / "empty_frames").mkdir()  # a frame folder without images is skipped
    frames = root / "run" / "run_frames"
    frames.mkdir()
    for i in range(3):
        (frames / f"{i:05d}.jpg").write_bytes(b"")
    manifest = prepare_folder(root, tmp_path / "out", val_fraction=0.2, test_fraction=0.2, seed=3)
    assert manifest.classes == ["jump", "run"] and not manifest.multilabel
    assert len(manifest.videos) == 21
    jump = [v.split for v in manifest.videos if v.labels == [0]]
    assert (jump.count("train"), jump.count("val"), jump.count("test")) == (6, 2, 2)
    assert manifest.extra["skipped_videos"] == 1 and "empty_frames" not in manifest.by_id()
    run_frames = manifest.by_id()["run_frames"]
    assert (run_frames.kind, run_frames.num_frames) == ("frames", 3)
    again = prepare_folder(root, tmp_path / "again", val_fraction=0.2, test_fraction=0.2, seed=3)
    assert [v.split for v in again.sorted_videos()] == [v.split for v in manifest.sorted_videos()]


def test_folder_flat_with_labels_csv(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    for video in ("a", "b", "c"):
        (root / f"{video}.webm").write_bytes(b"")
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\na,cut;stir\nb,stir\nc,10\nd,2\n")
    manifest = prepare_folder(root, tmp_path / "out", labels=labels)
    assert manifest.multilabel and manifest.classes == ["10", "2", "cut", "stir"]  # from the CSV, missing "d" included
    assert manifest.by_id()["a"].labels == [2, 3]
    warnings = [json.loads(line) for line in (tmp_path / "out" / "prepare_warnings.jsonl").read_text().splitlines()]
    assert [w["video"] for w in warnings] == ["d"]

    numeric = tmp_path / "numeric.csv"
    numeric.write_text("a,10\nb,9\nc,2\n")
    assert prepare_folder(root, tmp_path / "num", labels=numeric).classes == ["2", "9", "10"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,x\nb\n", "labels.csv:2: expected 2 fields"),
        ("a,x\na,y\n", "labels.csv:2: video 'a' listed twice"),
        ("a,x\nb, ;\n", "labels.csv:2: video 'b' has no label"),
    ],
)
def test_folder_bad_labels_csv(tmp_path, text, message):
    root = tmp_path / "raw"
    root.mkdir()
    (tmp_path / "labels.csv").write_text(text)
    with pytest.raises(UsageError, match=message):
        prepare_folder(root, tmp_path / "out", labels=tmp_path / "labels.csv")


def test_folder_duplicate_ids_across_classes(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "raw" / label).mkdir(parents=True)
        (tmp_path / "raw" / label / "clip.mp4").write_bytes(b"")
    with pytest.raises(UsageError, match="video id 'clip' also used by"):
        prepare_folder(tmp_path / "raw", tmp_path / "out")


def test_sources_inside_out_are_relative(tmp_path):
    out = tmp_path / "out"
    (out / "raw" / "cls").mkdir(parents=True)
    (out / "raw" / "cls" / "v.mp4").write_bytes(b"")
    manifest = prepare_folder(out / "raw", out, val_fraction=0, test_fraction=0)
    assert manifest.videos[0].source == "raw/cls/v.mp4"
    assert Manifest.load(out).source_path(manifest.videos[0]).is_file()
