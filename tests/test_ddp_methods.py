"""DDP for the training methods (hoitool.train.methods): 2 gloo ranks (torchrun) end where 1 process ends.

One test per method, each comparing the weights in ``last.pt`` and the logged loss terms of a run
launched with ``torchrun --nproc_per_node 2`` against the same run in one process, as
tests/test_ddp.py does for GLIDN (SGD and no dropout for the reasons given there). The data is the
synthetic set of tests/test_methods.py (node features of its class rules, with fps, frame counts
and turn times); the shared helpers below launch the CLI under torchrun and compare two runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_methods import _write_set
from test_train import request

from hoitool.train.loop import train

SETTINGS = {
    "train__epochs": 3,
    "train__batch_size": 4,
    "model__hidden": 16,
    "model__heads": 2,
    "optim__lr": 0.05,
    "optim__name": "sgd",
}
CLI_SETTINGS = [
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


def torchrun(arguments: list) -> None:
    """``python -m torch.distributed.run --standalone --nproc_per_node 2 -m hoitool ARGUMENTS`` (gloo on CPU)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "hoitool"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    finished = subprocess.run(
        [*command, *map(str, arguments)], capture_output=True, text=True, timeout=300, env=environment
    )
    assert finished.returncode == 0, finished.stderr[-3000:]


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_run(single: Path, ddp: Path, terms: tuple[str, ...]) -> None:
    """Every weight within 1e-5 after 3 epochs, the same logged loss terms per epoch (rank 0 writes alone)."""
    one = torch.load(single / "checkpoints" / "last.pt", weights_only=True)
    two = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)
    assert two["epoch"] == 3 and len(two["rng"]) == 2
    for key, value in one["members"]["main"]["model"].items():
        assert torch.allclose(value, two["members"]["main"]["model"][key], atol=1e-5, rtol=0), key
    ours, theirs = _metrics(ddp), _metrics(single)
    assert [line["epoch"] for line in ours] == [1, 2, 3]
    for mine, reference in zip(ours, theirs, strict=True):
        for term in terms:
            assert mine[term] == pytest.approx(reference[term], abs=1e-5), term
        assert mine["train_accuracy"] == reference["train_accuracy"]


@pytest.fixture(scope="module")
def synthetic_teacher(tmp_path_factory):
    """The synthetic set's stores and a global teacher that saved its node embeddings."""
    root = tmp_path_factory.mktemp("ddp_methods")
    _write_set(root)
    teacher = root / "teacher"
    train(request(root / "features.h5", teacher, view="global", train__embeddings=True, **SETTINGS))
    return root, teacher


# -- one test per method --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("at", ["end", "events"])
def test_anticipation_two_gloo_ranks_match_one_process(synthetic_teacher, tmp_path, at):
    """L_d's node embeddings go through the DDP-wrapped forward (at: events also runs the frozen teacher per rank)."""
    root, teacher = synthetic_teacher
    method = {"method__name": "anticipation", "anticipation__lead_time": "40%", "anticipation__at": at}
    train(request(root / "features.h5", tmp_path / "single", kind="student", teacher=teacher, **SETTINGS, **method))
    torchrun(
        [
            "distill",
            root / "features.h5",
            "--teacher",
            teacher,
            "--view",
            "global",
            "--method",
            "anticipation",
            "--lead-time",
            "40%",
            "--anticipate-at",
            at,
            "--out",
            tmp_path / "ddp",
            *CLI_SETTINGS,
        ]
    )
    assert_same_run(tmp_path / "single", tmp_path / "ddp", ("loss_ce", "loss_distill", "loss_total"))


@pytest.mark.slow
def test_cl_hoi_two_ranks_match_one_process(tmp_path, capsys):
    """CL-HOI's in-batch terms (InfoNCE context, text->video) contrast each video with the whole global batch.

    18 train videos in global batches of 17: the first splits 9 / 8 over the ranks (shares of unequal
    size, padded for the gather), the last is one video, so rank 1 trains on a zero-weight dummy that
    must be neither an anchor nor a negative. Checked to fail without the gather (each rank contrasting
    its own share) and without leaving the dummy out.
    """
    from helpers import run_cli

    _write_set(tmp_path)
    features, vlm = tmp_path / "features.h5", tmp_path / "vlm.jsonl"
    assert run_cli(["text", "simulate", tmp_path / "manifest.json", "--out", vlm], capsys)[0] == 0
    method = {"method__name": "cl_hoi", "cl_hoi__vlm_import": str(vlm), "cl_hoi__text_encoder": "tiny:16"}
    train(request(features, tmp_path / "single", **dict(SETTINGS, train__batch_size=17), **method))
    cli = list(CLI_SETTINGS)
    cli[cli.index("--batch-size") + 1] = "17"
    method_flags = ["--method", "cl_hoi", "--vlm-import", vlm, "--text-encoder", "tiny:16"]
    torchrun(["train-teacher", features, "--view", "global", "--out", tmp_path / "ddp", *method_flags, *cli])
    terms = ("loss_ce", "loss_context", "loss_i2t", "loss_t2i", "loss_sr", "loss_total")
    assert_same_run(tmp_path / "single", tmp_path / "ddp", terms)
    assert all(line["loss_context"] > 0 and line["loss_t2i"] > 0 for line in _metrics(tmp_path / "ddp"))


@pytest.mark.slow
def test_dual_attention_two_gloo_ranks_match_one_process(tmp_path):
    """Action and object heads, both stages, on node regions standardised by the train split's statistics
    (data.standardize=train: the buffers are set before DDP wraps the model, so every rank holds the same)."""
    from test_dual_attention_cli import TINY, with_objects
    from test_train import make_features

    features = make_features(tmp_path, split_sizes={"train": 9, "val": 3, "test": 2})
    with_objects(features)
    settings = dict(SETTINGS, data__standardize="train", dual_attention__temporal="mean")
    train(request(features, tmp_path / "single", **settings, **TINY))
    flags = [
        f"dual_attention.{key[len('dual_attention__') :]}={value}"
        for key, value in TINY.items()
        if key != "method__name"
    ]
    extra = [
        item for flag in [*flags, "dual_attention.temporal=mean", "data.standardize=train"] for item in ("--set", flag)
    ]
    torchrun(
        [
            "train-teacher",
            features,
            "--view",
            "global",
            "--method",
            "dual_attention",
            "--out",
            tmp_path / "ddp",
            *CLI_SETTINGS,
            *extra,
        ]
    )
    assert_same_run(
        tmp_path / "single",
        tmp_path / "ddp",
        ("loss_ce", "loss_ce_first", "loss_object", "loss_object_first", "loss_total"),
    )
