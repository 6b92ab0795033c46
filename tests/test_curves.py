"""``hoitool plot``: learning curves read from metrics.jsonl, written as PNG and PDF."""

from __future__ import annotations

import json

from helpers import run_cli
from test_train import make_features, request

from hoitool.eval.curves import read_curves
from hoitool.train.loop import train


def test_plot_writes_png_and_pdf_from_metrics(tmp_path, capsys):
    features = make_features(tmp_path)
    run_dir = tmp_path / "run"
    train(request(features, run_dir, train__epochs=3))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curves = read_curves(run_dir)
    assert curves.series["loss_ce"] == ([1, 2, 3], [record["loss_ce"] for record in records])
    assert curves.series["val_accuracy"][1] == [record["val_accuracy"] for record in records]
    assert "lr" not in curves.series and "best" not in curves.series
    assert curves.best_epoch == max(record["epoch"] for record in records if record["best"])

    code, _, err = run_cli(["plot", run_dir, run_dir, "--out", tmp_path / "curves"], capsys)
    assert code == 0, err
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "curves.pdf").read_bytes()[:4] == b"%PDF"


def test_plot_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    code, _, err = run_cli(["plot", tmp_path, "--out", tmp_path / "curves"], capsys)
    assert code == 2 and "metrics.jsonl: missing" in err
    code, _, err = run_cli(["plot", tmp_path, "--out", tmp_path / "c", "--format", "gif"], capsys)
    assert code == 2 and "plot format 'gif'" in err
    assert not list(tmp_path.glob("c.*")) and not list(tmp_path.glob("curves.*"))
