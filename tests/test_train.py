"""train-teacher end to end on a tiny features store: the run directory contract, data paths, CLI refusals.

``make_features`` and ``request`` are shared with test_resume, test_distill and test_ddp.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import run_cli

from hoitool.errors import UsageError
from hoitool.io.digest import file_sha256
from hoitool.manifest import Manifest, VideoEntry
from hoitool.runs import load_run
from hoitool.store import StagedStore, open_store
from hoitool.train.data import EpochBatchSampler, collate
from hoitool.train.loop import TrainRequest, train
from hoitool.train.presets import resolve_training_config

SPLIT_SIZES = {"train": 8, "val": 4, "test": 4}


def make_features(
    root: Path,
    multilabel: bool = False,
    views: int = 1,
    classes: int = 3,
    frames: int = 4,
    boxes: int = 3,
    dim: int = 16,
    suffix: str = ".h5",
    seed: int = 0,
    split_sizes: dict | None = None,
    name: str = "feats",
) -> Path:
    """A manifest and a features store whose nodes carry a class signal (so training can learn something)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(classes, dim)) * 2
    videos = []
    for split, count in (split_sizes or SPLIT_SIZES).items():
        for number in range(count):
            video_id = f"{split}{number:02d}"
            labels = (
                sorted(rng.choice(classes, size=2, replace=False).tolist())
                if multilabel
                else [int(rng.integers(classes))]
            )
            videos.append(VideoEntry(id=video_id, source=f"videos/{video_id}.mp4", labels=labels, split=split))
    manifest_path = root / "manifest.json"
    Manifest(dataset="tiny", classes=[f"class{c}" for c in range(classes)], multilabel=multilabel, videos=videos).save(
        manifest_path
    )
    store_path = root / f"{name}{suffix}"
    staged = StagedStore(store_path, "features", {"config": {"seed": seed}, "upstream": None})
    for video in videos:
        nodes = rng.normal(size=(views, frames, boxes, dim)) + prototypes[video.labels].sum(0)
        valid = np.ones((views, frames, boxes), dtype=bool)
        valid[:, :, -1] = rng.random((views, frames)) > 0.5
        corner = rng.uniform(0, 100, size=(views, frames, boxes, 2))
        staged.save(
            video.id,
            {
                "nodes": nodes.astype(np.float16),
                "valid": valid,
                "boxes": np.concatenate([corner, corner + 20], axis=-1).astype(np.float32),
                "frame_size": np.array([240, 320]),
                "frame_valid": np.ones((views, frames), dtype=bool),
                "frame_indices": np.tile(np.arange(frames), (views, 1)),
            },
        )
    staged.finalize(
        {"manifest": str(manifest_path.resolve())},
        {"views": views, "dim": dim, "num_frames": frames, "max_boxes": boxes},
    )
    return store_path


def request(
    features: Path,
    out: Path,
    kind: str = "teacher",
    view: str = "global",
    teacher: Path | None = None,
    resume: bool = False,
    force: bool = False,
    **settings,
) -> TrainRequest:
    """A TrainRequest with a tiny, fast config; ``settings`` are dotted config keys ("train__epochs" style)."""
    overrides = {
        "train.epochs": 3,
        "train.batch_size": 4,
        "model.hidden": 16,
        "model.heads": 2,
        "optim.lr": 0.01,
        "data.workers": 0,
        "runtime.device": "cpu",
        "model.view": view,
    }
    overrides.update({key.replace("__", "."): value for key, value in settings.items()})
    config = resolve_training_config(kind != "teacher", None, None, overrides)
    return TrainRequest(kind, features, out, config, teacher=teacher, resume=resume, force=force)


def state_dicts_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    features = make_features(root)
    result = train(request(features, root / "run", model__dropout=0.1))
    return features, root / "run", result


def test_run_directory_contract(teacher_run):
    features, run_dir, result = teacher_run
    info = json.loads((run_dir / "run.json").read_text())
    assert info["kind"] == "teacher" and info["view"] == "global" and info["teacher_view"] is None
    assert (
        info["multilabel"] is False and info["classes"] == ["class0", "class1", "class2"] and info["dataset"] == "tiny"
    )
    assert info["distill"] is None and info["seed"] == 0 and info["features"] == str(features.resolve())
    config = yaml.safe_load((run_dir / "config.resolved.yaml").read_text())
    assert config["train"]["epochs"] == 3 and config["model"]["view"] == "global"
    assert (run_dir / "checkpoints" / "last.pt").exists() and (run_dir / "checkpoints" / "best.pt").exists()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in records] == [1, 2, 3]
    for record in records:
        assert {"lr", "loss_ce", "loss_total", "train_accuracy", "val_loss", "val_accuracy", "best", "time"} <= set(
            record
        )
        assert record["loss_ce"] == pytest.approx(record["loss_total"])
        assert record["grad_share_ce"] == 1.0  # a teacher's one term carries the whole gradient
    # every video and view of every split, from best.pt, with the store's and the checkpoint's fingerprints
    run = load_run(run_dir)
    assert sorted(run.video_ids.tolist()) == sorted(open_store(features).video_ids)
    assert set(run.split.tolist()) == {"train", "val", "test"} and (run.view_index == 0).all()
    assert run.provenance["features"]["fingerprint"] == open_store(features).fingerprint
    assert run.provenance["checkpoint"]["sha256"] == file_sha256(run_dir / "checkpoints" / "best.pt")
    assert result.trained_epochs == 3 and not result.already_finished


def test_best_checkpoint_is_chosen_on_val_and_outputs_come_from_it(teacher_run):
    features, run_dir, result = teacher_run
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [record["val_accuracy"] for record in records]
    best_epoch = 1 + int(np.argmax(val))  # first maximum: ties keep the earlier epoch
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch == result.best["main"]["epoch"] and best["score"] == max(val)
    assert [record["best"] for record in records][best_epoch - 1]
    run = load_run(run_dir)
    assert run.provenance["checkpoint"]["epoch"] == best_epoch
    # recompute the val accuracy of best.pt from the outputs: it is the val score that chose it
    rows = run.rows("val")
    accuracy = (run.logits[rows].argmax(1) == run.targets[rows].argmax(1)).mean()
    assert accuracy == pytest.approx(max(val))


def test_learns_the_class_signal(tmp_path):
    features = make_features(tmp_path, split_sizes={"train": 24, "val": 6, "test": 6})
    train(request(features, tmp_path / "run", train__epochs=8, train__batch_size=8))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["loss_ce"] < records[0]["loss_ce"]
    assert max(record["val_accuracy"] for record in records) > 0.5  # chance is 1/3


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_multilabel_multiview_store_uses_bce_map_and_writes_every_view(tmp_path, suffix):
    features = make_features(tmp_path, multilabel=True, views=3, suffix=suffix)
    train(request(features, tmp_path / "run", view="local", train__epochs=2, data__random_view=True))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"train_map", "val_map"} <= set(records[0]) and "val_accuracy" not in records[0]
    run = load_run(tmp_path / "run")
    assert run.multilabel and len(run.video_ids) == 3 * sum(SPLIT_SIZES.values())
    assert sorted(set(run.view_index.tolist())) == [0, 1, 2]
    assert (run.targets.sum(1) == 2).all()


def test_preloaded_lazy_and_worker_reads_train_identically(tmp_path):
    features = make_features(tmp_path)
    states = []
    for name, preload, workers in (("ram", True, 0), ("lazy", False, 0), ("workers", False, 2)):
        train(request(features, tmp_path / name, train__epochs=2, data__preload=preload, data__workers=workers))
        states.append(
            torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["members"]["main"]["model"]
        )
    assert state_dicts_equal(states[0], states[1]) and state_dicts_equal(states[0], states[2])


def test_schedule_decays_the_learning_rate(tmp_path):
    features = make_features(tmp_path, split_sizes={"train": 4, "val": 2, "test": 0})
    train(request(features, tmp_path / "run", train__epochs=3, schedule__step_size=2, optim__name="sgd", optim__lr=0.1))
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([0.1, 0.1, 0.01])


def test_cli_refuses_existing_run_amp_on_cpu_and_non_run_dirs(teacher_run, tmp_path, capsys):
    features, run_dir, _ = teacher_run
    base = ["train-teacher", features, "--view", "global", "--device", "cpu", "--workers", "0", "--epochs", "1"]
    code, _, text = run_cli(base + ["--out", run_dir], capsys)
    assert code == 2 and "refusing to resume the teacher run: it was made with a different config" in text
    assert "--resume" in text
    code, _, text = run_cli(base + ["--out", tmp_path / "amp", "--amp"], capsys)
    assert code == 2 and "--amp needs a CUDA device" in text
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    code, _, text = run_cli(base + ["--out", other, "--force"], capsys)
    assert code == 2 and "not a hoitool run directory" in text and (other / "thesis.tex").exists()


def test_cli_trains_and_prints_presets(tmp_path, capsys):
    features = make_features(tmp_path, split_sizes={"train": 4, "val": 2, "test": 2})
    out = tmp_path / "run"
    code, _, _ = run_cli(
        [
            "train-teacher",
            features,
            "--view",
            "baseline",
            "--out",
            out,
            "--device",
            "cpu",
            "--workers",
            "0",
            "--epochs",
            "1",
            "--batch-size",
            "2",
            "--set",
            "model.hidden=8",
        ],
        capsys,
    )
    assert code == 0 and json.loads((out / "run.json").read_text())["view"] == "baseline"
    code, text, _ = run_cli(
        ["train-teacher", features, "--view", "global", "--out", out, "--preset", "cad120", "--print-config"], capsys
    )
    config = yaml.safe_load(text)
    assert code == 0 and config["optim"] == {"name": "adam", "lr": 2e-5, "momentum": 0.9, "weight_decay": 0.0}
    assert config["train"]["epochs"] == 100 and config["schedule"]["step_size"] == 50 and config["model"]["layers"] == 3
    code, _, text = run_cli(["train-teacher", features, "--view", "sideways", "--out", out], capsys)
    assert code == 2 and "Invalid value for '--view'" in text and "'global', 'local', 'baseline'" in text


def test_request_without_train_videos_is_refused(tmp_path):
    features = make_features(tmp_path, split_sizes={"val": 2, "test": 2})
    with pytest.raises(UsageError, match="no videos of the manifest's train split"):
        train(request(features, tmp_path / "run"))


def test_collate_pads_videos_of_different_length_and_box_count():
    def sample(frames, boxes, index):
        return {
            "nodes": np.ones((frames, boxes, 4), np.float16),
            "valid": np.ones((frames, boxes), bool),
            "boxes": np.ones((frames, boxes, 4), np.float32),
            "frame_size": np.array([10, 20]),
            "index": index,
            "view": 0,
            "weight": 0.5,
            "target": index,
        }

    batch = collate([sample(3, 2, 0), sample(2, 4, 1)])
    assert batch["nodes"].shape == (2, 3, 4, 4) and batch["valid"].shape == (2, 3, 4)
    assert batch["valid"][0].sum() == 6 and batch["valid"][1].sum() == 8
    assert (
        not batch["valid"][0, :, 2:].any() and not batch["valid"][1, 2].any() and batch["nodes"][1, 2].abs().sum() == 0
    )
    assert batch["target"].tolist() == [0, 1] and batch["frame_size"].dtype == torch.float32


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_sampler_shares_each_global_batch_across_ranks_with_mean_preserving_weights(world_size):
    samplers = [EpochBatchSampler(10, 4, seed=7, rank=rank, world_size=world_size) for rank in range(world_size)]
    for sampler in samplers:
        sampler.set_epoch(3)
    single = EpochBatchSampler(10, 4, seed=7)
    single.set_epoch(3)
    reference = list(single)
    shares = [list(sampler) for sampler in samplers]
    assert all(len(share) == len(reference) == 3 for share in shares)
    for step, global_batch in enumerate(reference):
        real = [ref for share in shares for ref in share[step] if ref.weight > 0]
        assert sorted(ref.position for ref in real) == sorted(ref.position for ref in global_batch)
        # DDP averages over ranks: sum of weights / world_size == 1 means the global batch mean
        assert sum(ref.weight for ref in real) / world_size == pytest.approx(1.0)
    # every rank gets a batch at every step (a zero-weight dummy when the last batch is smaller than the world)
    assert all(share[-1] for share in shares)
    # the order is a pure function of (seed, epoch)
    single.set_epoch(4)
    assert [ref.position for batch in single for ref in batch] != [ref.position for batch in reference for ref in batch]
    single.set_epoch(3)
    assert list(single) == reference
