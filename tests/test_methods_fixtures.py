"""Issue 9's methods from the CLI on a fixture dataset: the CAD-120 fixture in the publisher's layout.

prepare -> extract boxes -> extract features -> train-teacher (--save-embeddings) -> distill --method
anticipation (the first 60% of each video; CAD-120's manifest has frame counts, not a frame rate, so
the lead time is a fraction) -> eval at lead times; ``text simulate`` on the prepared manifest ->
train-teacher --method cl_hoi -> eval against the true labels. CAD-120's sub-activity segments name
no class, so anticipation trains on the activity labels (``label_at_end`` leaves them alone).
dual_attention on the same fixture: tests/test_dual_attention_cli.py.
"""

from __future__ import annotations

import json

import pytest
from helpers import run_cli
from test_cad120_layout import write_cad120

from hoitool.manifest import Manifest
from hoitool.runs import load_run

TINY = ["--device", "cpu", "--workers", "0", "--epochs", "2", "--batch-size", "2", "--set", "model.hidden=16"]


@pytest.mark.slow
def test_anticipation_and_cl_hoi_on_the_cad120_fixture_from_the_cli(tmp_path, capsys):
    root = write_cad120(tmp_path / "raw")
    data = tmp_path / "data"
    prepare = ["prepare", "cad120", "--out", data, "--root", root, "--fold", "Subject1", "--val", "0.5"]
    assert run_cli(prepare, capsys)[0] == 0
    boxes = ["extract", "boxes", data, "--out", tmp_path / "b.h5", "--source", "dataset", "--frames", "4"]
    assert run_cli([*boxes, "--top-k", "3", "--workers", "0"], capsys)[0] == 0
    features = ["extract", "features", tmp_path / "b.h5", "--out", tmp_path / "f.h5", "--backbone", "resnet18"]
    features += ["--weights", "random", "--device", "cpu", "--workers", "0", "--set", "short_side=64"]
    assert run_cli(features, capsys)[0] == 0
    store = tmp_path / "f.h5"
    manifest = Manifest.load(data / "manifest.json")
    tests = [video.id for video in manifest.videos if video.split == "test"]

    teacher = tmp_path / "teacher"
    argv = ["train-teacher", store, "--view", "global", "--save-embeddings", "--out", teacher, *TINY]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (teacher / "embeddings.npz").is_file() and (teacher / "embeddings.json").is_file()

    student = tmp_path / "anticipation"
    argv = ["distill", store, "--teacher", teacher, "--view", "global", "--method", "anticipation"]
    code, _, err = run_cli([*argv, "--lead-time", "60%", "--out", student, *TINY], capsys)
    assert code == 0, err
    info = json.loads((student / "run.json").read_text())
    assert info["method"]["name"] == "anticipation" and info["method"]["lead_time"] == "60%"
    records = [json.loads(line) for line in (student / "metrics.jsonl").read_text().splitlines()]
    assert all(record["loss_distill"] > 0 for record in records)  # L_d against the teacher's node embeddings
    code, out, err = run_cli(["eval", student, "--lead-time", "60%", "--lead-time", "0%"], capsys)
    assert code == 0, err
    lead = json.loads((student / "eval" / "lead_times_test.json").read_text())["lead_times"]
    metrics = json.loads((student / "eval" / "metrics_test.json").read_text())
    assert set(lead) == {"60%", "0%"} and lead["60%"]["videos"] == len(tests) and "60%" in out
    # the run's own outputs were made from the same truncated input as eval at the trained lead time
    assert lead["60%"]["accuracy"] == pytest.approx(metrics["metrics"]["accuracy"])

    # at the end of each CAD-120 sub-activity segment: one sample per segment, the activity as its label
    events = tmp_path / "anticipation-events"
    code, _, err = run_cli([*argv, "--lead-time", "60%", "--anticipate-at", "events", "--out", events, *TINY], capsys)
    assert code == 0, err
    ends = {
        f"{video.id}@{int(end)}"
        for video in manifest.videos
        if video.split == "test"
        for _, end, _ in video.extra["segments"]
    }
    assert ends and ends <= set(load_run(events).video_ids)  # each segment's end is a sample of its own
    code, _, err = run_cli(["eval", events, "--lead-time", "60%", "--anticipate-at", "events"], capsys)
    assert code == 0, err
    lead = json.loads((events / "eval" / "lead_times_test.json").read_text())["lead_times"]
    assert lead["60%"]["videos"] == len(ends)  # every event scored as its own sample

    vlm = tmp_path / "vlm.jsonl"
    code, _, err = run_cli(["text", "simulate", data / "manifest.json", "--out", vlm, "--error-rate", "0"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in vlm.read_text().splitlines()]
    assert len(lines) == len(manifest.videos)
    assert {line["triplets"][0][0] for line in lines} <= {name.replace("_", " ") for name in manifest.classes}
    run = tmp_path / "cl_hoi"
    argv = ["train-teacher", store, "--view", "global", "--method", "cl_hoi", "--vlm-import", vlm]
    code, _, err = run_cli([*argv, "--text-encoder", "tiny:16", "--out", run, *TINY], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all({"loss_i2t", "loss_t2i", "loss_sr"} <= set(record) for record in records)
    assert (run / "text_embeddings.npz").is_file()
    code, _, err = run_cli(["eval", run], capsys)
    assert code == 0, err
    record = json.loads((run / "eval" / "metrics_test.json").read_text())
    assert record["counts"]["videos"] == len(tests)  # scored against the manifest's true labels
