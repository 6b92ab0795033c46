"""``hoitool crossval cad120``: four leave-one-subject-out folds on a tiny CAD-120 in the publisher's layout.

The fixture is test_cad120_layout's writer (RGB_<n>.png beside Depth_<n>.png, the release's
annotation files) with the release's four subjects; one features store serves every fold.
Per-fold numbers are checked against scikit-learn on the runs' own outputs, the summary
against numpy's mean and sample std.
"""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score
from test_cad120_layout import write_cad120
from test_prepare import write_cad120_root

from hoitool.crossval import CrossvalRequest, check_fold, crossval, summarize
from hoitool.datasets.cad120 import prepare_cad120
from hoitool.errors import HoitoolError, UsageError
from hoitool.manifest import Manifest
from hoitool.runs import load_run

FOLDS = ["Subject1", "Subject3", "Subject4", "Subject5"]  # the release's subjects
SUBJECTS = {  # two activities per subject, one video each: 8 videos, 6 train and 2 test per fold
    subject: {
        "having_meal": [(f"{number:02d}00000001", {1: "bowl", 2: "cup"})],
        "taking_food": [(f"{number:02d}00000002", {1: "microwave"})],
    }
    for number, subject in zip((1, 3, 4, 5), FOLDS, strict=True)
}
TINY = ["--epochs", 2, "--batch-size", 4, "--workers", 0, "--device", "cpu"]
TINY += ["--set", "model.hidden=16", "--set", "model.layers=1", "--set", "optim.lr=0.01"]


def paint_activities(root: Path, seed: int = 0) -> None:
    """Give the RGB frames something to learn: the fixture's frames encode only the frame number (the same in
    every video), so each activity gets its own colour here, with per-video noise (the depth images stay)."""
    rng = np.random.default_rng(seed)
    colours = {"having_meal": (200, 40, 40), "taking_food": (40, 40, 200)}
    for frame in sorted(root.glob("Subject*_rgbd_images/*/*/RGB_*.png")):
        activity = frame.parent.parent.name
        noise = rng.normal(0, 60, (480, 640, 3))
        Image.fromarray(np.clip(np.array(colours[activity]) + noise, 0, 255).astype(np.uint8)).save(frame)


@pytest.fixture(scope="module")
def cad120_features(tmp_path_factory):
    """The release layout, one preparation (any fold: the store keeps every video) and one extraction."""
    base = tmp_path_factory.mktemp("crossval")
    root = write_cad120(base / "raw", frames=2, subjects=SUBJECTS)
    paint_activities(root)
    prepare_cad120(root, base / "data", fold="Subject1", val=0.0)
    from hoitool.extract.boxes import extract_boxes
    from hoitool.extract.features import extract_features

    extract_boxes(base / "data", base / "boxes.h5", {"source": "dataset", "frames": 2, "top_k": 3})
    extract_features(
        base / "boxes.h5",
        base / "feats.h5",
        {
            "backbone": {"arch": "resnet18", "weights": "random"},
            "mode": "crop",
            "crop_size": 32,
            "short_side": 64,
            "runtime": {"workers": 0, "device": "cpu"},
        },
    )
    return root, base / "feats.h5", base


def _sklearn_scores(run_dir):
    """Accuracy and macro-F1 of a run's test outputs, computed here (one view per video)."""
    run = load_run(run_dir)
    rows = run.rows("test")
    truth, predicted = run.targets[rows].argmax(axis=1), run.logits[rows].argmax(axis=1)
    labels = sorted(set(truth) | set(predicted))
    return accuracy_score(truth, predicted), f1_score(truth, predicted, average="macro", labels=labels)


@pytest.mark.slow
def test_four_folds_are_trained_scored_and_summarised(cad120_features, capsys, monkeypatch):
    root, features, base = cad120_features
    # eval's confusion plots (PNG, PDF, SVG per run) are most of the time here and are tested in test_eval_cli
    monkeypatch.setattr("hoitool.eval.plots.plot_confusion_matrix", lambda *args, **kwargs: None)
    out = base / "cv"
    argv = ["crossval", "cad120", "--root", root, "--features", features, "--out", out, "--val", 0.4, *TINY]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "mean ± std" in stdout and all(fold in stdout for fold in FOLDS)
    record = json.loads((out / "crossval.json").read_text())
    assert [fold["fold"] for fold in record["folds"]] == FOLDS
    for fold in record["folds"]:
        subject = fold["fold"]
        manifest = Manifest.load(out / subject / "data" / "manifest.json")
        by_split = {split: {video.group for video in manifest.split(split)} for split in ("train", "val", "test")}
        assert by_split["test"] == {subject}  # the fold's subject, and only it, is test
        assert by_split["val"] and subject not in by_split["val"] | by_split["train"]  # val from training subjects
        assert fold["videos"] == {"train": 4, "val": 2, "test": 2}  # round(0.4 * 3) of each activity's 3 is val
        for model in ("teacher", "student"):
            accuracy, macro_f1 = _sklearn_scores(out / subject / model)
            assert fold[model]["accuracy"] == pytest.approx(accuracy)
            assert fold[model]["macro_f1"] == pytest.approx(macro_f1)
        student = json.loads((out / subject / "student" / "run.json").read_text())
        assert (student["kind"], student["view"], student["teacher_view"]) == ("student", "local", "global")
    for model in ("teacher", "student"):
        values = np.array([fold[model]["accuracy"] for fold in record["folds"]])
        summary = record["summary"][model]["accuracy"]
        assert summary["mean"] == pytest.approx(values.mean()) and summary["n"] == 4
        assert summary["std"] == pytest.approx(values.std(ddof=1))
    rows = list(csv.DictReader((out / "crossval.csv").open()))
    assert len(rows) == 4 * 2 + 2 * 2 and rows[-2]["fold"] == "std"

    # Re-running skips every finished fold (the runs say they are done) and gives the same table.
    modified = (out / "Subject5" / "student" / "outputs.npz").stat().st_mtime_ns
    code, again, err = run_cli(argv, capsys)
    assert code == 0, err
    assert err.count("already finished") == 8 and again == stdout
    assert (out / "Subject5" / "student" / "outputs.npz").stat().st_mtime_ns == modified

    # Another training config on the same folds is refused by the runs' own rule, naming the key.
    code, _, err = run_cli([*argv, "--epochs", 3], capsys)
    assert code == 2 and "train.epochs" in err
    # Other splits with --force: prepare redoes them, but the finished runs are not silently reused on them.
    code, _, err = run_cli([*argv[: -len(TINY) - 2], "--val", 0.7, *TINY, "--force"], capsys)
    assert code == 2 and "splits changed since its runs were trained" in err
    assert json.loads((out / "crossval.json").read_text())["val"] == 0.4  # the results stay those of their splits


def test_refusals_before_any_work(tmp_path):
    root = write_cad120_root(tmp_path / "raw")  # Subject1 and Subject3
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own file")
    features = tmp_path / "missing.h5"
    cases = [
        (dict(out=mine), "not a hoitool crossval folder"),
        (dict(folds=["Subject2"]), "--folds Subject2"),
        (dict(student_view="side"), "--student-view"),
        (dict(val=1.0), "--val"),
        (dict(overrides=["optim.lr=-1"]), "optim.lr"),
        (dict(), "missing.h5"),
    ]
    for changes, message in cases:
        request = CrossvalRequest(**{"root": root, "features": features, "out": tmp_path / "cv", **changes})
        with pytest.raises(UsageError, match=message):
            crossval(request)
    assert (mine / "notes.txt").read_text() == "my own file" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "cv").exists()  # nothing written by any refusal


def test_check_fold_refuses_a_test_subject_in_val(tmp_path):
    manifest = prepare_cad120(write_cad120_root(tmp_path / "raw"), tmp_path / "out", fold="Subject1", val=0.5)
    ids = {video.id for video in manifest.videos}
    assert check_fold(manifest, "Subject1", ids, tmp_path)["test"] == 2
    leaked = next(video for video in manifest.videos if video.group == "Subject1")
    leaked.split = "val"
    with pytest.raises(HoitoolError, match="val split holds videos of the test subject Subject1"):
        check_fold(manifest, "Subject1", ids, tmp_path)
    leaked.split = "test"
    other = next(video for video in manifest.videos if video.group == "Subject3")
    other.split = "test"
    with pytest.raises(HoitoolError, match=r"test split holds subjects \['Subject1', 'Subject3'\]"):
        check_fold(manifest, "Subject1", ids, tmp_path)
    other.split = "train"
    with pytest.raises(UsageError, match="none of the train videos of fold Subject1"):
        check_fold(manifest, "Subject1", set(), tmp_path)


def test_summary_is_mean_and_sample_std_across_folds():
    folds = [
        {"teacher": {"accuracy": a, "macro_f1": None}, "student": {"accuracy": 1 - a, "macro_f1": a / 2}}
        for a in (0.5, 0.75, 1.0, 0.25)
    ]
    summary = summarize(folds)
    assert summary["teacher"]["accuracy"]["mean"] == pytest.approx(0.625)
    assert summary["teacher"]["accuracy"]["std"] == pytest.approx(statistics.stdev([0.5, 0.75, 1.0, 0.25]))
    assert summary["student"]["macro_f1"]["std"] == pytest.approx(statistics.stdev([0.25, 0.375, 0.5, 0.125]))
    assert summary["teacher"]["macro_f1"] == {"mean": summary["teacher"]["macro_f1"]["mean"], "std": None, "n": 0}
