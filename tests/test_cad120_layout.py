"""CAD-120 in the publisher's layout: Depth_<n>.png beside RGB_<n>.png in every frame folder.

The fixture writes real (tiny-content, full-size) PNGs: 640x480 8-bit RGB frames
whose red channel encodes the frame number, and 16-bit depth images beside them,
plus the annotation files in the formats of the release. prepare + extract boxes
must give exactly the RGB frames and the boxes of the source files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image
from test_prepare import JOINTS, skeleton_line

from hoitool.datasets.folder import prepare_folder
from hoitool.errors import UsageError
from hoitool.manifest import Manifest
from hoitool.store import open_store
from hoitool.video.reader import MixedFramesError, list_frame_files, probe, read_frames

FRAMES = 12  # past 9, so RGB_10.png sorts after RGB_9.png only when numbered numerically
VIDEOS = {  # subject -> activity -> [(video id, {object id: type})]
    "Subject1": {"having_meal": [("0510175411", {1: "bowl", 2: "cup"})]},
    "Subject3": {"having_meal": [("1204150645", {1: "plate"})], "taking_food": [("1204150647", {1: "microwave"})]},
}


def object_box(video: str, key: int, frame: int) -> list[int]:
    """A box that differs per video, object and frame (so a shifted index cannot match)."""
    offset = int(video[-2:]) + 7 * key + 3 * frame
    return [offset, 20 + key, offset + 40, 90 + frame]


def write_frames(folder: Path, frames: int) -> None:
    folder.mkdir(parents=True)
    for n in range(1, frames + 1):
        rgb = np.zeros((480, 640, 3), np.uint8)
        rgb[..., 0], rgb[..., 1] = 20 * n, 255
        Image.fromarray(rgb).save(folder / f"RGB_{n}.png")
        Image.fromarray(np.full((480, 640), 1000 + n, np.uint16)).save(folder / f"Depth_{n}.png")  # 16-bit, as released


def write_cad120(root: Path, frames: int = FRAMES, subjects: dict | None = None) -> Path:
    for subject, activities in (subjects or VIDEOS).items():
        for activity, videos in activities.items():
            annotations = root / f"{subject}_annotations" / activity
            annotations.mkdir(parents=True)
            labels, segments = [], []
            for video, objects in videos:
                labels.append(f"{video},{activity},{subject}," + "".join(f"{k}:{v}," for k, v in objects.items()))
                segments.append(f"{video},1,{frames},reaching,movable")
                for key in objects:
                    rows = [
                        ",".join(map(str, [n, key, *object_box(video, key, n), 0, 0, 0, 0, 0, 0])) + ","
                        for n in range(1, frames + 1)
                    ]
                    (annotations / f"{video}_obj{key}.txt").write_text("\n".join(rows) + "\n")
                (annotations / f"{video}.txt").write_text(
                    "\n".join(skeleton_line(n, JOINTS) for n in range(1, frames + 1)) + "\nEND\n"
                )
                write_frames(root / f"{subject}_rgbd_images" / activity / video, frames)
            (annotations / "activityLabel.txt").write_text("\n".join(labels) + "\n")
            (annotations / "labeling.txt").write_text("\n".join(segments) + "\n")
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("cad120")
    root = write_cad120(base / "raw")
    return root, base


def test_prepare_and_extract_boxes_give_the_rgb_frames_and_their_boxes(prepared, capsys):
    root, base = prepared
    out = base / "data"
    code, stdout, err = run_cli(
        ["prepare", "cad120", "--out", out, "--root", root, "--fold", "Subject1", "--val", "0.5"], capsys
    )
    assert code == 0, err
    assert f"{FRAMES} / {FRAMES} / {FRAMES} (min / median / max)" in stdout  # a doubled count would show 24
    manifest = Manifest.load(out)
    assert {video.num_frames for video in manifest.videos} == {FRAMES}
    assert manifest.by_id()["0510175411"].objects == ["bowl", "cup"]

    code, _, err = run_cli(
        ["extract", "boxes", out, "--out", base / "boxes.h5", "--source", "dataset", "--frames", 5, "--top-k", 4],
        capsys,
    )
    assert code == 0, err
    store = open_store(base / "boxes.h5")
    assert sorted(store.video_ids) == sorted(manifest.by_id())
    for video_id, video in manifest.by_id().items():
        arrays = store.read(video_id)
        indices = arrays["frame_indices"][0]
        assert arrays["frame_size"].tolist() == [480, 640]
        # The frames those indices address are RGB_<index + 1>.png: full colour, red = 20 * number.
        frames = read_frames(manifest.source_path(video), "frames", indices)
        assert frames.shape == (5, 480, 640, 3)
        assert frames[:, 0, 0, 0].tolist() == [20 * (int(i) + 1) for i in indices] and (frames[..., 1] == 255).all()
        objects = {
            k: v
            for activities in VIDEOS.values()
            for videos in activities.values()
            for vid, o in videos
            if vid == video_id
            for k, v in o.items()
        }
        for t, index in enumerate(indices):
            valid = arrays["valid"][0, t]
            assert arrays["is_person"][0, t][valid].sum() == 1  # the skeleton's person box
            got = sorted(arrays["boxes"][0, t][valid & ~arrays["is_person"][0, t]].tolist())
            expected = sorted([float(x) for x in object_box(video_id, key, int(index) + 1)] for key in objects)
            assert got == expected, (video_id, int(index))


def test_a_mixed_folder_without_a_pattern_is_one_clear_error(prepared):
    root, _ = prepared
    folder = root / "Subject1_rgbd_images" / "having_meal" / "0510175411"
    with pytest.raises(MixedFramesError) as error:
        list_frame_files(folder)
    message = str(error.value)
    assert "\n" not in message and "RGB_<n>.png (12)" in message and "Depth_<n>.png (12)" in message
    assert str(folder / "Depth_%d.png") in message or str(folder / "RGB_%d.png") in message
    assert probe(folder / "RGB_%d.png", "frames").num_frames == FRAMES
    assert [p.name for p in list_frame_files(folder / "RGB_%d.png")][8:11] == ["RGB_9.png", "RGB_10.png", "RGB_11.png"]


def test_folder_dataset_refuses_mixed_series_unless_given_a_pattern(prepared, tmp_path, capsys):
    root, _ = prepared
    classes = tmp_path / "raw" / "having_meal"
    classes.mkdir(parents=True)
    (classes / "clip").symlink_to(root / "Subject1_rgbd_images" / "having_meal" / "0510175411")
    with pytest.raises(UsageError, match=r"holds 2 image series .*--frame-pattern") as error:
        prepare_folder(tmp_path / "raw", tmp_path / "out")
    assert "\n" not in str(error.value) and not (tmp_path / "out" / "manifest.json").exists()
    manifest = prepare_folder(
        tmp_path / "raw", tmp_path / "out", frame_pattern="RGB_%d.png", val_fraction=0, test_fraction=0
    )
    assert manifest.videos[0].num_frames == FRAMES and manifest.videos[0].source.endswith("clip/RGB_%d.png")


def test_rgb_numbers_with_a_gap_are_skipped_with_a_reason(tmp_path):
    root = write_cad120(tmp_path / "raw", frames=4)
    (root / "Subject3_rgbd_images" / "taking_food" / "1204150647" / "RGB_3.png").unlink()
    from hoitool.datasets.cad120 import prepare_cad120

    manifest = prepare_cad120(root, tmp_path / "out", fold="Subject1", val=0.0)
    assert "1204150647" not in manifest.by_id()
    warnings = [json.loads(line) for line in (tmp_path / "out" / "prepare_warnings.jsonl").read_text().splitlines()]
    assert any(w["video"] == "1204150647" and "without gaps" in w["reason"] for w in warnings)
