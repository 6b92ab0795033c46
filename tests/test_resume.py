"""Full-state resume: interrupted + resumed == uninterrupted, bit for bit, on CPU; and what resume refuses."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest
import torch
from test_train import make_features, request, state_dicts_equal

from hoitool.errors import Interrupted, StaleArtifactError, UsageError
from hoitool.io.atomic import append_jsonl
from hoitool.runs import load_run
from hoitool.train.loop import train

EPOCHS = 4


def _stop_after(epoch_to_stop: int):
    def hook(epoch, record):
        if epoch == epoch_to_stop:
            raise Interrupted("simulated SIGTERM")

    return hook


def _metrics(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        record.pop("time")
    return records


def _assert_same_run(a, b, members=("main",)):
    last_a = torch.load(a / "checkpoints" / "last.pt", weights_only=True)
    last_b = torch.load(b / "checkpoints" / "last.pt", weights_only=True)
    assert last_a["epoch"] == last_b["epoch"] == EPOCHS
    for name in members:
        left, right = last_a["members"][name], last_b["members"][name]
        assert state_dicts_equal(left["model"], right["model"])
        for state_a, state_b in zip(
            left["optimizer"]["state"].values(), right["optimizer"]["state"].values(), strict=False
        ):
            assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
        assert left["scheduler"] == right["scheduler"] and left["best_epoch"] == right["best_epoch"]
    assert torch.equal(last_a["rng"][0]["torch"], last_b["rng"][0]["torch"])
    assert _metrics(a) == _metrics(b)
    run_a, run_b = load_run(a), load_run(b)
    assert np.array_equal(run_a.logits, run_b.logits) and np.array_equal(run_a.video_ids, run_b.video_ids)


@pytest.mark.parametrize("kind", ["teacher", "dml"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, kind):
    # dropout (global RNG), random views (sampler) and SGD momentum + step decay (optimizer/scheduler state) all in play
    features = make_features(tmp_path, views=2)
    settings = dict(
        kind=kind,
        view="local",
        train__epochs=EPOCHS,
        model__dropout=0.3,
        data__random_view=True,
        optim__name="sgd",
        optim__lr=0.05,
        schedule__step_size=2,
    )
    train(request(features, tmp_path / "straight", **settings))
    with pytest.raises(Interrupted):
        train(request(features, tmp_path / "resumed", **settings), on_epoch_end=_stop_after(2))
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    # a crash between the metrics line and last.pt leaves a line of an epoch that will be re-run
    append_jsonl(tmp_path / "resumed" / "metrics.jsonl", {"epoch": 3, "loss_ce": 123.0})
    result = train(request(features, tmp_path / "resumed", resume=True, **settings))
    assert result.trained_epochs == EPOCHS - 2
    _assert_same_run(tmp_path / "straight", tmp_path / "resumed", ("main", "peer") if kind == "dml" else ("main",))
    if kind == "dml":
        assert np.array_equal(
            load_run(tmp_path / "straight" / "peer").logits, load_run(tmp_path / "resumed" / "peer").logits
        )


def test_resume_of_a_finished_run_is_a_no_op(tmp_path, caplog):
    features = make_features(tmp_path, split_sizes={"train": 4, "val": 2, "test": 2})
    train(request(features, tmp_path / "run", train__epochs=2))
    files = sorted(tmp_path.joinpath("run").rglob("*"))
    stamps = {path: os.stat(path).st_mtime_ns for path in files if path.is_file()}
    caplog.clear()
    caplog.set_level(logging.INFO, logger="hoitool")  # the library reports through logging (hoitool.log)
    result = train(request(features, tmp_path / "run", train__epochs=2, resume=True))
    assert result.already_finished and result.trained_epochs == 0
    assert "already finished" in caplog.text
    assert stamps == {path: os.stat(path).st_mtime_ns for path in files if path.is_file()}


def test_resume_rewrites_missing_outputs_without_training(tmp_path):
    features = make_features(tmp_path, split_sizes={"train": 4, "val": 2, "test": 2})
    train(request(features, tmp_path / "run", train__epochs=2))
    before = load_run(tmp_path / "run").logits
    (tmp_path / "run" / "outputs.json").unlink()
    result = train(request(features, tmp_path / "run", train__epochs=2, resume=True))
    assert result.trained_epochs == 0 and not result.already_finished
    assert np.array_equal(load_run(tmp_path / "run").logits, before)


def test_resume_with_a_different_config_is_refused(tmp_path):
    features = make_features(tmp_path, split_sizes={"train": 4, "val": 2, "test": 2})
    with pytest.raises(Interrupted):
        train(request(features, tmp_path / "run"), on_epoch_end=_stop_after(1))
    with pytest.raises(UsageError, match=r"different config \(optim.lr: 0.01 -> 0.02"):
        train(request(features, tmp_path / "run", resume=True, optim__lr=0.02))
    # runtime-only settings (device, workers, preload) may change
    result = train(request(features, tmp_path / "run", resume=True, data__preload=False))
    assert result.trained_epochs == 2


def test_resume_on_a_changed_features_store_is_stale_unless_forced(tmp_path):
    features = make_features(tmp_path, split_sizes={"train": 4, "val": 2, "test": 2})
    with pytest.raises(Interrupted):
        train(request(features, tmp_path / "run"), on_epoch_end=_stop_after(1))
    other = tmp_path / "other"
    other.mkdir()
    changed = make_features(other, seed=5, split_sizes={"train": 4, "val": 2, "test": 2})
    shutil.rmtree(tmp_path / "manifest.json", ignore_errors=True)
    os.replace(other / "manifest.json", tmp_path / "manifest.json")
    shutil.rmtree(features) if features.is_dir() else features.unlink()  # a store is a folder (schema 2)
    os.replace(changed, features)
    with pytest.raises(
        StaleArtifactError,
        match=re.escape(f"last.pt: refusing to resume the teacher run: its features store {features} changed since"),
    ):
        train(request(features, tmp_path / "run", resume=True, data__manifest=str(tmp_path / "manifest.json")))
    result = train(
        request(features, tmp_path / "run", resume=True, force=True, data__manifest=str(tmp_path / "manifest.json"))
    )
    assert result.trained_epochs == 2


def test_force_without_resume_starts_over_and_resume_on_empty_dir_starts_fresh(tmp_path):
    features = make_features(tmp_path, split_sizes={"train": 4, "val": 2, "test": 2})
    train(request(features, tmp_path / "run", train__epochs=1))
    with pytest.raises(UsageError, match=r"refusing to resume the teacher run: .*train\.epochs: 1 -> 2.*--force"):
        train(request(features, tmp_path / "run", train__epochs=2))
    result = train(request(features, tmp_path / "run", train__epochs=2, force=True))
    assert result.trained_epochs == 2 and len(_metrics(tmp_path / "run")) == 2
    result = train(request(features, tmp_path / "fresh", train__epochs=1, resume=True))
    assert result.trained_epochs == 1
