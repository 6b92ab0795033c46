"""DDP: 2 CPU processes (gloo, launched by torchrun) end where 1 process with the same global batch ends.

Nine training videos with a global batch of 4 make the last global batch a
single video, so one rank trains on a zero-weight dummy: the per-sample
weighting must still give the global batch mean. Dropout is off (rank-local
RNG streams would differ). Tolerance: atol 1e-5 on every weight after 3 epochs
(9 steps); measured: 6e-8, the rounding of the all-reduce sum.

SGD, not Adam: Adam divides by sqrt(v), so a gradient that is mathematically
~0 (GAT's ``att_dst`` shifts all scores of a node equally; its exp_avg reaches
1e-10 here) turns 1e-8 rounding differences into updates of order lr: Adam
runs differ by up to 9e-3 in that one tensor while every other weight agrees
to 4e-7.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_train import make_features, request

from hoitool.train.loop import train

SETTINGS = {
    "train__epochs": 3,
    "train__batch_size": 4,
    "model__hidden": 16,
    "model__heads": 2,
    "optim__lr": 0.05,
    "optim__name": "sgd",
}


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    features = make_features(tmp_path, split_sizes={"train": 9, "val": 3, "test": 2})
    train(request(features, tmp_path / "single", **SETTINGS))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "hoitool",
        "train-teacher",
        str(features),
        "--view",
        "global",
        "--out",
        str(tmp_path / "ddp"),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--epochs",
        "3",
        "--batch-size",
        "4",
        "--lr",
        "0.05",
        "--set",
        "optim.name=sgd",
        "--set",
        "model.hidden=16",
        "--set",
        "model.heads=2",
    ]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert finished.returncode == 0, finished.stderr[-3000:]
    single = torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)
    assert ddp["epoch"] == 3 and len(ddp["rng"]) == 2
    for key, value in single["members"]["main"]["model"].items():
        assert torch.allclose(value, ddp["members"]["main"]["model"][key], atol=1e-5, rtol=0), key
    lines = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]  # rank 0 alone writes
    for ours, theirs in zip(lines, reference, strict=False):
        assert ours["loss_ce"] == pytest.approx(theirs["loss_ce"], abs=1e-5)
        assert ours["train_accuracy"] == theirs["train_accuracy"]
