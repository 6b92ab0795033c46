"""``hoitool report``: method labels, grouping across seeds, mean ± std, on-the-fly and stale evaluation."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli

from hoitool.eval.report import build_rows, run_label
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
    assert f"| toy | baseline | 3 | {cell} |" in markdown and "Accuracy (%)" in markdown
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
