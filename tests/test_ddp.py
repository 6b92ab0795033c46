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

import pytest
from test_ddp_methods import CLI_SETTINGS, SETTINGS, assert_same_run, torchrun
from test_train import make_features, request

from hoitool.train.loop import train


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    features = make_features(tmp_path, split_sizes={"train": 9, "val": 3, "test": 2})
    train(request(features, tmp_path / "single", **SETTINGS))
    torchrun(["train-teacher", features, "--view", "global", "--out", tmp_path / "ddp", *CLI_SETTINGS])
    assert_same_run(tmp_path / "single", tmp_path / "ddp", ("loss_ce",))
