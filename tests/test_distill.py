"""distill: the teacher artifact, its staleness checks, the loss terms, and Deep Mutual Learning."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml
from helpers import run_cli
from test_train import make_features, request

from hoitool.errors import StaleArtifactError
from hoitool.runs import load_run
from hoitool.store import open_store
from hoitool.train.loop import train
from hoitool.train.teacher import load_teacher_logits


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    features = make_features(root, views=2)
    train(request(features, root / "teacher", view="global", train__epochs=2))
    return root, features, root / "teacher"


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_student_logs_each_term_and_records_its_teacher(teacher, tmp_path):
    root, features, teacher_dir = teacher
    out = tmp_path / "student"
    train(
        request(
            features,
            out,
            kind="student",
            view="local",
            teacher=teacher_dir,
            train__epochs=2,
            distill__T=5.0,
            distill__lambda1=0.7,
            distill__lambda2=0.3,
        )
    )
    info = json.loads((out / "run.json").read_text())
    assert info["kind"] == "student" and info["view"] == "local" and info["teacher_view"] == "global"
    assert info["distill"] == {"loss": "kd", "T": 5.0, "lambda1": 0.7, "lambda2": 0.3}
    assert info["label"] == "global-teacher"
    for record in _records(out):
        assert record["loss_distill"] > 0
        assert record["loss_total"] == pytest.approx(0.7 * record["loss_ce"] + 0.3 * record["loss_distill"], rel=1e-6)
        assert 0 < record["grad_share_distill"] < 1  # each weighted term's share of the gradient, logged per epoch
        assert record["grad_share_ce"] + record["grad_share_distill"] == pytest.approx(1.0)
    run = load_run(out)
    assert run.provenance["teacher"]["outputs_sha256"] == load_run(teacher_dir).outputs_sha256


def test_teacher_logits_are_the_train_rows_matched_by_video_and_view(teacher):
    root, features, teacher_dir = teacher
    run = load_run(teacher_dir)
    reader = open_store(features)
    ids = ["train05", "train00", "train03"]
    table = load_teacher_logits(teacher_dir, reader.fingerprint, ids, 2, run.classes, force=False)
    for position, video_id in enumerate(ids):
        for view in range(2):
            row = np.flatnonzero((run.video_ids == video_id) & (run.view_index == view))[0]
            assert np.array_equal(table[position, view], run.logits[row])


def test_student_with_lambda2_zero_matches_a_teacher_recipe_and_distillation_changes_training(teacher, tmp_path):
    root, features, teacher_dir = teacher
    common = dict(kind="student", view="local", teacher=teacher_dir, train__epochs=2)
    train(request(features, tmp_path / "plain", distill__lambda1=1.0, distill__lambda2=0.0, **common))
    train(request(features, tmp_path / "distilled", distill__lambda1=1.0, distill__lambda2=4.0, **common))
    train(request(features, tmp_path / "ce_only", view="local", train__epochs=2))
    weights = {
        name: torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["members"]["main"]["model"]
        for name in ("plain", "distilled", "ce_only")
    }
    assert all(torch.equal(weights["plain"][key], weights["ce_only"][key]) for key in weights["plain"])
    assert not all(torch.equal(weights["plain"][key], weights["distilled"][key]) for key in weights["plain"])


def test_stale_teacher_checkpoint_or_store_is_refused_unless_forced(teacher, tmp_path):
    root, features, teacher_dir = teacher
    stale = tmp_path / "teacher"
    shutil.copytree(teacher_dir, stale)
    best = stale / "checkpoints" / "best.pt"
    state = torch.load(best, weights_only=True)
    state["epoch"] = 99
    torch.save(state, best)
    with pytest.raises(
        StaleArtifactError, match=r"outputs.json: stale teacher outputs \(made from a different checkpoint"
    ):
        train(request(features, tmp_path / "s1", kind="student", view="local", teacher=stale, train__epochs=1))
    result = train(
        request(features, tmp_path / "s1", kind="student", view="local", teacher=stale, train__epochs=1, force=True)
    )
    assert result.trained_epochs == 1
    other = make_features(tmp_path, seed=3, name="other")
    with pytest.raises(StaleArtifactError, match="made from features store"):
        train(request(other, tmp_path / "s2", kind="student", view="local", teacher=teacher_dir, train__epochs=1))


def test_multilabel_default_loss_is_l2(tmp_path):
    features = make_features(tmp_path, multilabel=True, split_sizes={"train": 4, "val": 2, "test": 2})
    train(request(features, tmp_path / "teacher", view="global", train__epochs=1))
    train(
        request(
            features, tmp_path / "student", kind="student", view="local", teacher=tmp_path / "teacher", train__epochs=1
        )
    )
    assert json.loads((tmp_path / "student" / "run.json").read_text())["distill"]["loss"] == "l2"
    assert {"train_map", "loss_distill"} <= set(_records(tmp_path / "student")[0])


def test_dml_writes_both_views_with_peer_outputs(teacher, tmp_path):
    root, features, _ = teacher
    out = tmp_path / "dml"
    train(request(features, out, kind="dml", view="local", train__epochs=2, distill__T=1.0, distill__lambda2=1.0))
    info, peer = json.loads((out / "run.json").read_text()), json.loads((out / "peer" / "run.json").read_text())
    assert (info["kind"], info["view"], info["teacher_view"]) == ("dml", "local", "global")
    assert (peer["kind"], peer["view"], peer["teacher_view"]) == ("dml", "global", "local")
    record = _records(out)[0]
    assert {"loss_ce", "loss_distill", "peer_loss_ce", "peer_loss_distill", "val_accuracy", "peer_val_accuracy"} <= set(
        record
    )
    assert record["peer_grad_share_ce"] + record["peer_grad_share_distill"] == pytest.approx(1.0)  # each model's own
    main_run, peer_run = load_run(out), load_run(out / "peer")
    assert len(main_run.video_ids) == len(peer_run.video_ids) == 2 * 16
    assert not np.array_equal(main_run.logits, peer_run.logits)
    assert peer_run.provenance["checkpoint"]["path"] == "checkpoints/best.pt"


def test_cli_generalized_lambdas_and_refusals(teacher, tmp_path, capsys):
    root, features, teacher_dir = teacher
    out = tmp_path / "student"
    base = [
        "distill",
        features,
        "--view",
        "local",
        "--out",
        out,
        "--device",
        "cpu",
        "--workers",
        "0",
        "--epochs",
        "1",
        "--set",
        "model.hidden=16",
        "--set",
        "model.heads=2",
    ]
    code, _, _ = run_cli(base + ["--teacher", teacher_dir, "--generalized", "0.7", "--T", "10"], capsys)
    assert code == 0
    assert json.loads((out / "run.json").read_text())["distill"] == {
        "loss": "kd",
        "T": 10.0,
        "lambda1": pytest.approx(0.3),
        "lambda2": 0.7,
    }
    code, _, text = run_cli(base + ["--teacher", teacher_dir, "--generalized", "0.7", "--lambda1", "1"], capsys)
    assert code == 2 and "--generalized sets both lambdas" in text
    code, _, text = run_cli(base + ["--force"], capsys)
    assert code == 2 and "--teacher RUN is required" in text
    code, _, text = run_cli(base + ["--dml", "--teacher", teacher_dir], capsys)
    assert code == 2 and "drop --teacher" in text
    # the cad120 preset picks the global teacher's T and lambdas (Table 9)
    code, text, _ = run_cli(
        [
            "distill",
            features,
            "--view",
            "local",
            "--out",
            tmp_path / "p",
            "--teacher",
            teacher_dir,
            "--preset",
            "cad120",
            "--print-config",
        ],
        capsys,
    )
    distill = yaml.safe_load(text)["distill"]
    assert code == 0 and distill == {"loss": "kd", "T": 10.0, "lambda1": 0.3, "lambda2": 0.7, "dml": False}
