"""``hoitool report``: method labels, grouping across seeds, mean ± std, on-the-fly and stale evaluation."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from hoitool.eval.report import AT_CHANCE_MARK, build_rows, check_run, run_label
from hoitool.runs import write_outputs

STUDENT = {
    "kind": "student",
    "view": "local",
    "teacher_view": "global",
    "distill": {"loss": "kd", "T": 10, "lambda1": 0.3, "lambda2": 0.7},
}


def make_run(path: Path, seed: int, multilabel: bool = False, **info) -> Path:
    """A tiny run: 8 test videos x 2 views, 4 classes, logits noisy around the targets."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if multilabel:
        per_video = np.eye(4, dtype=np.float32)[np.arange(8) % 4] + np.eye(4, dtype=np.float32)[(np.arange(8) + 1) % 4]
    else:
        per_video = np.eye(4, dtype=np.float32)[np.arange(8) % 4]
    targets = np.repeat(per_video, 2, axis=0)
    logits = (targets + rng.normal(scale=0.8, size=targets.shape)).astype(np.float32)
    record = {
        "kind": "teacher",
        "view": "global",
        "teacher_view": None,
        "seed": seed,
        "multilabel": multilabel,
        "classes": ["a", "b", "c", "d"],
        "dataset": "toy",
        "features": "f.h5",
        "distill": None,
    }
    record.update(info)
    (path / "run.json").write_text(json.dumps(record))
    ids = np.repeat([f"v{i}" for i in range(8)], 2)
    write_outputs(path, ids, np.tile([0, 1], 8), ["test"] * 16, logits, targets, {"seed": seed})
    return path


def invoke(capsys, *argv):
    return run_cli([str(arg) for arg in argv], capsys)


def test_run_labels_follow_the_paper_naming():
    assert run_label({"kind": "teacher", "view": "baseline"}) == "baseline"
    assert run_label({"kind": "teacher", "view": "local"}) == "local"
    assert run_label(STUDENT) == "global->local (kd T=10 λ2=0.7)"
    second_regime = dict(STUDENT, teacher_view="local", distill={"loss": "l2", "T": 5, "lambda1": 1.0, "lambda2": 4.0})
    assert run_label(second_regime) == "local->local (l2 T=5 λ1=1 λ2=4)"
    assert run_label({"kind": "dml", "view": "local"}) == "DML local"
    assert run_label(dict(STUDENT, label="GLIDN (ours)")) == "GLIDN (ours)"


def test_build_rows_groups_by_dataset_and_label_in_order_of_first_appearance():
    def record(value, f1):
        return {
            "task": "single-label",
            "main_metric": "accuracy",
            "run": "r",
            "fusion": {"views": "max"},
            "metrics": {"accuracy": value, "macro_f1": f1},
        }

    entries = [
        ({"kind": "teacher", "view": "global", "dataset": "cad120", "seed": 0}, record(0.8, 0.7)),
        ({"kind": "teacher", "view": "baseline", "dataset": "cad120", "seed": 0}, record(0.5, 0.4)),
        ({"kind": "teacher", "view": "global", "dataset": "cad120", "seed": 1}, record(0.9, 0.6)),
        ({"kind": "teacher", "view": "global", "dataset": "other", "seed": 0}, record(0.1, 0.1)),
    ]
    rows = build_rows(entries)
    groups = [(r.dataset, r.method, r.n) for r in rows]
    assert groups == [("cad120", "global", 2), ("cad120", "baseline", 1), ("other", "global", 1)]
    assert rows[0].values == [0.8, 0.9] and rows[0].macro_f1 == [0.7, 0.6] and rows[0].seeds == [0, 1]


def test_report_aggregates_seeds_and_evaluates_missing_runs(tmp_path, capsys):
    baseline = [make_run(tmp_path / f"baseline{s}", s, view="baseline") for s in range(3)]
    student = [make_run(tmp_path / f"student{s}", 10 + s, **STUDENT) for s in range(2)]
    dml = make_run(tmp_path / "dml0", 20, kind="dml", view="local")
    code, _, err = invoke(capsys, "eval", baseline[0])  # one run evaluated beforehand, the rest on the fly
    assert code == 0, err
    runs = [*baseline, *student, dml]
    code, out, err = invoke(capsys, "report", *runs, "--out", tmp_path / "report")
    assert code == 0, err
    assert "not evaluated on 'test' yet" in err and f"{baseline[0]}: not evaluated" not in err
    assert all((run / "eval" / "metrics_test.json").is_file() for run in runs)
    with open(tmp_path / "report" / "report.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["method"] for row in table] == ["baseline", "global->local (kd T=10 λ2=0.7)", "DML local"]
    assert [int(row["n"]) for row in table] == [3, 2, 1]
    accuracy = [json.loads((r / "eval" / "metrics_test.json").read_text())["metrics"]["accuracy"] for r in baseline]
    assert float(table[0]["mean"]) == pytest.approx(np.mean(accuracy), abs=1e-15)
    assert float(table[0]["std"]) == pytest.approx(np.std(accuracy, ddof=1), abs=1e-15)
    assert table[2]["std"] == "" and table[0]["seeds"] == "0;1;2" and table[0]["metric"] == "accuracy"
    markdown = (tmp_path / "report" / "report.md").read_text()
    cell = f"{100 * np.mean(accuracy):.2f} ± {100 * np.std(accuracy, ddof=1):.2f}"
    assert f"| toy | baseline | 3 | {cell}" in markdown and "Accuracy (%)" in markdown  # (+ a mark if at chance)
    assert "| toy | baseline | 3 |" in out  # the table is printed too


def test_report_re_evaluates_runs_whose_outputs_changed(tmp_path, capsys):
    run = make_run(tmp_path / "run", 0)
    assert invoke(capsys, "eval", run, "--fusion", "mean")[0] == 0
    before = json.loads((run / "eval" / "metrics_test.json").read_text())
    make_run(run, 5)  # the trainer wrote new outputs since
    code, _, err = invoke(capsys, "report", run, "--out", tmp_path / "report")
    assert code == 0 and "outputs changed since" in err
    after = json.loads((run / "eval" / "metrics_test.json").read_text())
    assert after["outputs_sha256"] != before["outputs_sha256"] and after["fusion"]["views"] == "mean"


def test_report_multi_label_uses_official_map_unless_asked(tmp_path, capsys):
    runs = [make_run(tmp_path / f"ml{s}", s, multilabel=True, view="local") for s in range(2)]
    single = make_run(tmp_path / "sl", 0)
    code, _, err = invoke(capsys, "report", *runs, single, "--out", tmp_path / "auto")
    assert code == 0, err
    with open(tmp_path / "auto" / "report.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [(row["method"], row["metric"]) for row in table] == [("local", "map_official"), ("global", "accuracy")]
    markdown = (tmp_path / "auto" / "report.md").read_text()
    assert "Main metric (%)" in markdown and "mAP (official)" in markdown
    code, _, err = invoke(capsys, "report", *runs, "--out", tmp_path / "sk", "--metric", "map_sklearn")
    assert code == 0, err
    sklearn = [json.loads((r / "eval" / "metrics_test.json").read_text())["metrics"]["map_sklearn"] for r in runs]
    with open(tmp_path / "sk" / "report.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert row["metric"] == "map_sklearn" and float(row["mean"]) == pytest.approx(np.mean(sklearn), abs=1e-15)


def test_report_usage_errors(tmp_path, capsys):
    run = make_run(tmp_path / "run", 0)
    (tmp_path / "empty").mkdir()
    for argv, message in [
        (["report", run, "--out", tmp_path / "r", "--metric", "f2"], "--metric 'f2'"),
        (["report", run, tmp_path / "empty", "--out", tmp_path / "r"], "run.json: missing"),
        (["report", run, run, "--out", tmp_path / "r"], "given twice"),
    ]:
        code, _, err = invoke(capsys, *argv)
        assert code == 2 and message in err, (argv, err)


def make_guard_run(path: Path, seed: int, test_right: int, train_right: int, best_epoch: int, **info) -> Path:
    """By hand: 36 test and 36 train videos of 4 balanced classes (one view); the first ``*_right`` videos
    of a split get their own class's logit highest, the rest the next class's."""
    path.mkdir(parents=True, exist_ok=True)
    labels = np.tile(np.arange(4), 9)
    ids, split, logits, targets = [], [], [], []
    for name, right in (("test", test_right), ("train", train_right)):
        predicted = np.where(np.arange(36) < right, labels, (labels + 1) % 4)
        ids += [f"{name}{i}" for i in range(36)]
        split += [name] * 36
        logits.append(np.eye(4, dtype=np.float32)[predicted] * 3)
        targets.append(np.eye(4, dtype=np.float32)[labels])
    record = {"kind": "teacher", "view": "global", "seed": seed, "multilabel": False, "classes": list("abcd")}
    (path / "run.json").write_text(json.dumps(dict(record, dataset="toy", features="f.h5", distill=None, **info)))
    provenance = {"checkpoint": {"path": "checkpoints/best.pt", "epoch": best_epoch}}
    write_outputs(path, ids, np.zeros(72, int), split, np.concatenate(logits), np.concatenate(targets), provenance)
    return path


def test_a_run_stuck_at_chance_is_marked_and_named_with_train_accuracy_and_best_epoch(tmp_path, capsys):
    """Chance is 1/4. Learned: 30/36 right on test and train. Stuck on test: 9/36 (= chance). Stuck in training:
    train 9/36 while test is 30/36. Each run's train accuracy and best epoch stand beside its test score."""
    learned = make_guard_run(tmp_path / "g0", 0, 30, 30, best_epoch=12)
    stuck = make_guard_run(tmp_path / "g1", 1, 9, 30, best_epoch=1)
    untrained = make_guard_run(tmp_path / "b0", 0, 30, 9, best_epoch=3, view="baseline")
    code, out, err = invoke(capsys, "report", learned, stuck, untrained, "--out", tmp_path / "report")
    assert code == 0, err
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert f"| toy | global | 2 | 54.17 ± 41.25 {AT_CHANCE_MARK}1 |" in markdown  # (30/36 + 9/36) / 2
    assert f"| toy | baseline | 1 | 83.33 {AT_CHANCE_MARK}1 |" in markdown
    assert (
        f"{AT_CHANCE_MARK} global: {stuck} is at chance (chance within the interval of its test accuracy)" in markdown
    )
    assert f"{AT_CHANCE_MARK} baseline: {untrained} is at chance (train accuracy at chance)" in markdown
    assert f"{learned} is at chance" not in markdown
    runs = [line for line in markdown.splitlines() if line.startswith("| global |") or line.startswith("| baseline |")]
    assert runs[0].startswith("| global | 0 | 83.3 [") and runs[0].endswith(f"| 83.3 | 12 |  | {learned} |")
    assert runs[1].startswith("| global | 1 | 25.0 [") and runs[1].endswith(
        f"| 83.3 | 1 | {AT_CHANCE_MARK} | {stuck} |"
    )
    assert runs[2].endswith(f"| 25.0 | 3 | {AT_CHANCE_MARK} | {untrained} |")
    with open(tmp_path / "report" / "report.csv", newline="") as handle:
        table = {row["method"]: row for row in csv.DictReader(handle)}
    assert table["global"]["runs_at_chance"] == "1" and float(table["global"]["train_accuracy_mean"]) == 30 / 36
    assert "is at chance" in out  # printed too


def test_check_run_by_hand(tmp_path):
    run = make_guard_run(tmp_path / "r", 0, 18, 36, best_epoch=5)
    record = {"task": "single-label", "fusion": {"views": "max"}, "provenance": {"checkpoint": {"epoch": 5}}}
    check = check_run(run, "test", record)
    assert check.best_epoch == 5 and check.chance == 0.25 and check.train_accuracy == 1.0
    assert check.test.mean == 0.5 and check.test.low > 0.25 and not check.stuck  # 18/36: interval about ±0.16
    assert check_run(run, "test", dict(record, task="multi-label")).test is None  # no chance test for mAP
