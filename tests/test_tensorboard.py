"""train.tensorboard: event files that read back equal to metrics.jsonl, per member; a runtime key; --force owns them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import run_cli
from test_train import make_features, request

from hoitool.errors import Interrupted
from hoitool.train.loop import train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402


def read_events(folder: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every event file in ``folder``, read by TensorBoard's own reader."""
    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: {event.step: tensor_util.make_ndarray(event.tensor_proto).item() for event in events.Tensors(tag)}
        for tag in events.Tags()["tensors"]
    }


def _stop_after(epoch: int):
    def stop(done: int, record: dict) -> None:
        if done == epoch:
            raise Interrupted("simulated SIGTERM")

    return stop


def expected(records: list[dict], prefix: str, other: str) -> dict[str, dict[int, float]]:
    """The scalars of metrics.jsonl one member should have, derived independently of hoitool.train.board."""
    tags: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.items():
            mine = key.startswith(prefix) if prefix else not key.startswith(other)
            if key != "epoch" and mine and value is not None:
                tags.setdefault(key[len(prefix) :], {})[record["epoch"]] = float(value)
    return tags


@pytest.mark.slow
def test_dml_run_writes_per_member_events_equal_to_metrics_and_resumes_with_it_turned_on(tmp_path):
    features = make_features(tmp_path)
    out = tmp_path / "dml"
    options = {"kind": "dml", "view": "local", "distill__T": 1.0, "distill__lambda2": 1.0}
    train(request(features, out, train__epochs=2, train__tensorboard=True, **options))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    main, peer = read_events(out / "tensorboard" / "main"), read_events(out / "tensorboard" / "peer")
    assert main == expected(records, "", "peer_") and peer == expected(records, "peer_", "")
    assert {"lr", "loss_total", "val_accuracy", "best", "time"} <= set(main) and "loss_distill" in peer
    assert main["loss_ce"][2] == records[1]["loss_ce"]  # exact: double-precision summaries

    resumed = tmp_path / "resumed"  # tensorboard off, then on for the resume: not a different config
    with pytest.raises(Interrupted):
        train(request(features, resumed, train__epochs=3, **options), on_epoch_end=_stop_after(2))
    assert not (resumed / "tensorboard").exists()
    result = train(request(features, resumed, train__epochs=3, train__tensorboard=True, **options))
    assert result.trained_epochs == 1
    assert set(read_events(resumed / "tensorboard" / "main")["loss_ce"]) == {3}

    train(request(features, out, train__epochs=1, force=True, **options))  # --force deletes the old events
    assert not (out / "tensorboard").exists()


def test_missing_tensorboard_package_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    features = make_features(tmp_path)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    out = tmp_path / "run"
    argv = ["train-teacher", str(features), "--view", "global", "--out", str(out), "--device", "cpu", "--tensorboard"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "pip install 'hoitool[tensorboard]'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
