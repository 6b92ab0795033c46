"""Something-Something v2 with Something-Else boxes, in the publishers' layouts.

The SSv2 annotation files carry ``placeholders``; the Something-Else release is
several part files, each ``{video id: [frame, ...]}`` with frames as published
(``url``, ``split``, ``gt_placeholders``, ``name`` ``<id>/0001.jpg``,
``nr_instances``, ``task_index``, ``labels`` of ``box2d``/``gt_annotation``/
``category``/``standard_category``). Videos are real 12 fps VP9 webm files.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from helpers import run_cli

from hoitool.datasets.ssv2 import prepare_ssv2, read_something_else
from hoitool.errors import UsageError
from hoitool.manifest import Manifest
from hoitool.store import open_store

FRAMES = 20
TRAIN = [
    {
        "id": "151201",
        "label": "pushing bottle from left to right",
        "template": "Pushing [something] from left to right",
        "placeholders": ["bottle"],
    },
    {
        "id": "3201",
        "label": "putting wireless mouse onto mouse pad",
        "template": "Putting [something] onto [something]",
        "placeholders": ["wireless mouse", "mouse pad"],
    },
]
VALIDATION = [{"id": "13201", "label": "holding cup", "template": "Holding [something]", "placeholders": ["cup"]}]
LABELS = {
    "Holding something": "0",
    "Pushing something from left to right": "1",
    "Putting something onto something": "2",
}


def box(video: str, slot: int, n: int) -> dict:
    """A box that differs per video, object slot and frame number n (1-based), in 320x240 pixels."""
    x1 = (int(video) % 50) + 10.25 * slot + 2.5 * n
    return {"x1": x1, "y1": 30.5 + slot, "x2": x1 + 60.0, "y2": 150.75 + n}


def frame_record(video: str, n: int, objects: list[str]) -> dict:
    labels = [
        {
            "box2d": box(video, slot, n),
            "gt_annotation": f"object {slot}",
            "category": name,
            "standard_category": f"{slot:04d}",
        }
        for slot, name in enumerate(objects)
    ]
    if n % 2:  # a hand in every other frame
        labels.append(
            {
                "box2d": {"x1": 0, "y1": 100.0 + n, "x2": 40.5, "y2": 239.99999999999994},
                "gt_annotation": "object hand",
                "category": "hand",
                "standard_category": "hand",
            }
        )
    return {
        "url": f"https://scalabel-something-else.s3-us-west-2.amazonaws.com/annotated_frames/{video}/{n:04d}.jpg",
        "split": "80perc_95",
        "gt_placeholders": objects,
        "name": f"{video}/{n:04d}.jpg",
        "nr_instances": len(labels),
        "task_index": 681,
        "labels": labels,
    }


def write_webm(path: Path, frames: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=12)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for i in range(frames):
            image = av.VideoFrame.from_ndarray(np.full((240, 320, 3), 10 * i, np.uint8), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssv2")
    files = {"labels": LABELS, "train": TRAIN, "validation": VALIDATION, "test": [{"id": "99"}]}
    for name, data in files.items():
        (root / f"something-something-v2-{name}.json").write_text(json.dumps(data))
    (root / "20bn-something-something-v2").mkdir()
    for item in TRAIN + VALIDATION:
        write_webm(root / "20bn-something-something-v2" / f"{item['id']}.webm", FRAMES)
    objects = {item["id"]: item["placeholders"] for item in TRAIN + VALIDATION}
    # Two parts, as released; 13201 has no boxes at all and 777 is not in the SSv2 files.
    part1 = {"151201": [frame_record("151201", n, objects["151201"]) for n in range(1, FRAMES + 1)]}
    part2 = {
        "3201": [frame_record("3201", n, objects["3201"]) for n in range(1, FRAMES + 1) if n != 6],
        "777": [frame_record("777", 1, ["pen"])],
    }
    (root / "bounding_box_smthsmth_part1.json").write_text(json.dumps(part1))
    (root / "bounding_box_smthsmth_part2.json").write_text(json.dumps(part2))
    return root


def test_prepare_and_extract_give_the_published_boxes_and_objects(raw, tmp_path, capsys):
    out = tmp_path / "data"
    code, _, err = run_cli(
        [
            "prepare",
            "ssv2",
            "--out",
            out,
            "--root",
            raw,
            "--video-dir",
            "20bn-something-something-v2",
            "--boxes",
            raw / "bounding_box_smthsmth_part1.json",
            "--boxes",
            raw / "bounding_box_smthsmth_part2.json",
        ],
        capsys,
    )
    assert code == 0, err
    manifest = Manifest.load(out)
    by_id = manifest.by_id()
    assert by_id["3201"].objects == ["wireless mouse", "mouse pad"] and by_id["13201"].objects == ["cup"]
    assert manifest.object_classes == ["hand", "object 0", "object 1"]
    assert by_id["13201"].annotations is None and by_id["151201"].annotations == "annotations.jsonl"
    info = manifest.extra["something_else"]
    assert (info["videos_with_boxes"], info["videos_without_boxes"], info["boxes_for_other_videos"]) == (2, 1, 1)

    code, _, err = run_cli(
        ["extract", "boxes", out, "--out", tmp_path / "boxes.h5", "--source", "dataset", "--frames", 6, "--top-k", 4],
        capsys,
    )
    assert code == 3, err  # 13201 has no boxes: recorded as a failed video, the others are done
    store = open_store(tmp_path / "boxes.h5")
    assert sorted(store.video_ids) == ["151201", "3201"]
    for video in store.video_ids:
        arrays = store.read(video)
        assert arrays["frame_size"].tolist() == [240, 320]
        for t, index in enumerate(arrays["frame_indices"][0]):
            n = int(index) + 1  # decoded frame index i is the annotation's <id>/<i+1>.jpg
            valid = arrays["valid"][0, t]
            if video == "3201" and n == 6:
                assert not valid.any()  # a frame the annotations skip has no boxes
                continue
            hands = arrays["is_person"][0, t][valid]
            assert hands.sum() == n % 2
            objects = arrays["boxes"][0, t][valid & ~arrays["is_person"][0, t]]
            expected = [
                [b["x1"], b["y1"], b["x2"], b["y2"]]
                for b in (box(video, s, n) for s in range(len(by_id[video].objects)))
            ]
            np.testing.assert_allclose(sorted(objects.tolist()), sorted(expected), rtol=0, atol=1e-4)
            slots = sorted(arrays["labels"][0, t][valid & ~arrays["is_person"][0, t]].tolist())
            assert slots == [s + 1 for s in range(len(by_id[video].objects))]


def test_one_video_frame_list_and_bad_files_are_one_line_errors(raw, tmp_path):
    single = tmp_path / "151201.json"
    single.write_text(json.dumps([frame_record("151201", 1, ["bottle"]), frame_record("151201", 2, ["bottle"])]))
    boxes = read_something_else([single])
    assert sorted(boxes["151201"]) == [0, 1] and boxes["151201"][0].is_person.tolist() == [False, True]
    with pytest.raises(UsageError, match=r"video 151201 is also in .*part1\.json"):
        read_something_else([raw / "bounding_box_smthsmth_part1.json", single])
    bad = frame_record("3201", 1, ["cup"])
    bad["labels"][0]["standard_category"] = "bowl"
    (tmp_path / "bad.json").write_text(json.dumps({"3201": [bad]}))
    with pytest.raises(UsageError, match=r"bad\.json: video 3201 frame 3201/0001\.jpg: standard_category 'bowl'"):
        prepare_ssv2(raw, tmp_path / "out", boxes=[tmp_path / "bad.json"])
    (tmp_path / "bad.json").write_text(json.dumps({"3201": [frame_record("151201", 1, ["cup"])]}))
    with pytest.raises(UsageError, match=r"frame name '151201/0001\.jpg' is not '3201/<n>\.jpg'"):
        read_something_else([tmp_path / "bad.json"])
    del bad["labels"][0]["box2d"]["y2"]
    (tmp_path / "bad.json").write_text(json.dumps({"3201": [bad]}))
    with pytest.raises(UsageError, match="expected labels with box2d x1,y1,x2,y2") as error:
        read_something_else([tmp_path / "bad.json"])
    assert "\n" not in str(error.value) and not (tmp_path / "out" / "manifest.json").exists()
