"""The real Charades files of ../shared/data/charades through every stage.

prepare charades (the real classes and test CSV; the train CSV is ``list_file.csv``,
the real train-CSV rows of the two real videos) -> extract boxes (RPN, random
weights, few frames) -> extract features (ResNet-18, random weights) -> a one-epoch
train-teacher -> eval. Only two mp4s exist, so the test split is made of two real
test-CSV ids whose files are links to those two videos; the other 1861 test videos
are missing, as they are for a user who has not downloaded them: prepare skips and
lists them, and eval ranks them last as the official script does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from hoitool.eval.charades import official_scores, read_charades_gt, read_submission
from hoitool.manifest import Manifest
from hoitool.store import open_store

CHARADES = Path(__file__).resolve().parents[2] / "shared" / "data" / "charades"
NEEDED = ("19UA5.mp4", "S6MPZ.mp4", "Charades_v1_classes.txt", "Charades_v1_test.csv", "list_file.csv")
TEST_LINKS = {"YSKX3": "19UA5.mp4", "T5ECU": "S6MPZ.mp4"}  # real test-CSV ids -> the real videos
CPU = ["--device", "cpu", "--workers", "0"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    absent = [name for name in NEEDED if not (CHARADES / name).is_file()]
    if absent:
        pytest.skip(
            f"real Charades files not found in {CHARADES} ({', '.join(absent)}): ../shared/data beside the checkout"
        )
    root = tmp_path_factory.mktemp("charades") / "raw"
    videos = root / "Charades_v1_480"
    videos.mkdir(parents=True)
    for name in ("Charades_v1_classes.txt", "Charades_v1_test.csv"):
        (root / name).symlink_to(CHARADES / name)
    (root / "Charades_v1_train.csv").symlink_to(CHARADES / "list_file.csv")
    for name in ("19UA5.mp4", "S6MPZ.mp4"):
        (videos / name).symlink_to(CHARADES / name)
    for video, target in TEST_LINKS.items():
        (videos / f"{video}.mp4").symlink_to(CHARADES / target)
    return root


def test_real_charades_through_every_stage(raw, capsys):
    work = raw.parent
    code, _, err = run_cli(
        ["prepare", "charades", "--out", work / "data", "--root", raw, "--val-fraction", "0.5"], capsys
    )
    assert code == 0, err
    assert "1861 video(s) skipped, listed in" in err and "prepare_warnings.jsonl" in err
    warnings = [json.loads(line) for line in (work / "data" / "prepare_warnings.jsonl").read_text().splitlines()]
    assert len(warnings) == 1861 and {w["reason"] for w in warnings} == {"video not found"}
    manifest = Manifest.load(work / "data")
    by_id = manifest.by_id()
    assert {by_id["19UA5"].split, by_id["S6MPZ"].split} == {"train", "val"}  # one subject each: held out by subject
    assert by_id["YSKX3"].split == by_id["T5ECU"].split == "test"
    assert by_id["19UA5"].objects == ["bag", "book", "bottle"] and by_id["YSKX3"].labels == [75, 76, 77, 79, 80]

    code, _, err = run_cli(
        [
            "extract",
            "boxes",
            work / "data",
            "--out",
            work / "boxes.h5",
            "--source",
            "rpn",
            "--weights",
            "random",
            "--frames",
            3,
            "--top-k",
            4,
            *CPU,
            "--set",
            "model.min_size=64",
            "--set",
            "model.max_size=128",
        ],
        capsys,
    )
    assert code == 0, err
    boxes = open_store(work / "boxes.h5")
    assert boxes.video_ids == sorted(by_id)
    sizes = {video: boxes.read(video)["frame_size"].tolist() for video in boxes.video_ids}
    assert sizes == {"19UA5": [272, 480], "YSKX3": [272, 480], "S6MPZ": [270, 480], "T5ECU": [270, 480]}
    # 3 frames at segment centres of the real frame counts (54 and 1155 frames).
    assert boxes.read("19UA5")["frame_indices"][0].tolist() == [9, 27, 45]
    assert boxes.read("S6MPZ")["frame_indices"][0].tolist() == [192, 577, 962]

    code, _, err = run_cli(
        [
            "extract",
            "features",
            work / "boxes.h5",
            "--out",
            work / "feats.h5",
            "--backbone",
            "resnet18",
            "--weights",
            "random",
            *CPU,
            "--set",
            "short_side=64",
        ],
        capsys,
    )
    assert code == 0, err
    features = open_store(work / "feats.h5")
    assert features.video_ids == boxes.video_ids

    code, _, err = run_cli(
        [
            "train-teacher",
            work / "feats.h5",
            "--view",
            "global",
            "--out",
            work / "run",
            "--epochs",
            1,
            "--batch-size",
            2,
            *CPU,
            "--set",
            "model.hidden=8",
            "--set",
            "model.heads=1",
        ],
        capsys,
    )
    assert code == 0, err

    code, _, err = run_cli(["eval", work / "run"], capsys)
    assert code == 0, err
    # The ground truth is found through the run's store and manifest: all 1863 test videos are ranked.
    assert "official metric over the 1863 videos of" in err and "1812 test video(s) with labels had no scores" in err
    record = json.loads((work / "run" / "eval" / "metrics_test.json").read_text())
    truth = record["counts"]["ground_truth"]
    assert (truth["videos"], truth["scored"], truth["missing"], truth["without_labels"]) == (1863, 2, 1812, 49)
    gt = read_charades_gt(raw / "Charades_v1_test.csv")
    ids, scores = read_submission(work / "run" / "eval" / "submission_test.txt")
    assert sorted(ids) == sorted(TEST_LINKS)
    mean_ap, weighted_ap, _, _ = official_scores(ids, scores, gt)
    assert record["metrics"]["map_official"] == mean_ap and record["metrics"]["wap_official"] == weighted_ap
    assert np.isfinite(mean_ap) and 0 < mean_ap < 1
