"""data.standardize=train: per-dimension statistics of the train split's valid nodes, carried by the model.

References: numpy over the stored float16 values and scikit-learn's StandardScaler (population std).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from test_resume import _stop_after
from test_train import request

from hoitool.errors import Interrupted, UsageError
from hoitool.manifest import Manifest, VideoEntry
from hoitool.nn.models import VIEWS, ContextGraphNet, build_model
from hoitool.nn.standardize import FeatureStandardization, standardization_of
from hoitool.runs import load_run
from hoitool.store import StagedStore, open_store
from hoitool.train import loop
from hoitool.train.checkpoint import load_checkpoint
from hoitool.train.loop import train
from hoitool.train.presets import resolve_training_config
from hoitool.train.standardize import MIN_STD, feature_statistics

DIM, FRAMES, BOXES = 6, 3, 3


def make_store(root, views=1, split_sizes=None):
    """A store whose val/test nodes sit 1000 above the train nodes and whose padding nodes hold -5000."""
    rng = np.random.default_rng(3)
    videos = []
    for split, count in (split_sizes or {"train": 6, "val": 3, "test": 3}).items():
        videos += [
            VideoEntry(id=f"{split}{i}", source=f"v/{split}{i}.mp4", labels=[i % 2], split=split) for i in range(count)
        ]
    Manifest(dataset="tiny", classes=["a", "b"], multilabel=False, videos=videos).save(root / "manifest.json")
    staged = StagedStore(root / "feats.h5", "features", {"config": {}, "upstream": None})
    scale = np.array([0.5, 1.0, 2.0, 3.0, 0.1, 1.0])
    for video in videos:
        nodes = rng.normal(size=(views, FRAMES, BOXES, DIM)) * scale + 4.0 + video.labels[0]
        nodes[..., 5] = 7.0  # a dimension without spread in the train split
        if video.split != "train":
            nodes += 1000.0
        valid = np.ones((views, FRAMES, BOXES), dtype=bool)
        valid[:, :, -1] = rng.random((views, FRAMES)) > 0.5
        nodes[~valid] = -5000.0
        corner = rng.uniform(0, 50, size=(views, FRAMES, BOXES, 2))
        staged.save(
            video.id,
            {
                "nodes": nodes.astype(np.float16),
                "valid": valid,
                "boxes": np.concatenate([corner, corner + 10], axis=-1).astype(np.float32),
                "frame_size": np.array([100, 100]),
                "frame_valid": np.ones((views, FRAMES), dtype=bool),
                "frame_indices": np.tile(np.arange(FRAMES), (views, 1)),
            },
        )
    staged.finalize(
        {"manifest": str((root / "manifest.json").resolve())},
        {"views": views, "dim": DIM, "num_frames": FRAMES, "max_boxes": BOXES},
    )
    return root / "feats.h5"


def train_nodes(store, views=None) -> np.ndarray:
    """Every valid node of the train split's first ``views`` views, as float64 (the reference's input)."""
    reader = open_store(store)
    rows = []
    for video_id in sorted(reader.video_ids):
        if video_id.startswith("train"):
            arrays = reader.read(video_id, ["nodes", "valid"])
            rows.append(arrays["nodes"][:views][arrays["valid"][:views].astype(bool)].astype(np.float64))
    return np.concatenate(rows)


def reference(store, views=None) -> tuple[np.ndarray, np.ndarray]:
    x = train_nodes(store, views)
    mean, std = x.mean(axis=0), x.std(axis=0)
    return mean, np.where(std < MIN_STD, 1.0, std)


@pytest.mark.parametrize("random_view", [True, False])
def test_a_run_standardises_with_the_train_splits_valid_nodes_only(tmp_path, random_view):
    store = make_store(tmp_path, views=2)
    run = tmp_path / "run"
    train(request(store, run, train__epochs=1, data__standardize="train", data__random_view=random_view))
    best = load_checkpoint(run / "checkpoints" / "best.pt")["model"]
    mean, std = reference(store, views=None if random_view else 1)  # views training reads: all, or view 0
    assert np.allclose(best["standardize.mean"].numpy(), mean, rtol=1e-6)
    assert np.allclose(best["standardize.std"].numpy(), std, rtol=1e-6)
    assert best["standardize.std"][5] == 1.0 and best["standardize.mean"][5] == pytest.approx(7.0)  # centred only
    assert (best["standardize.mean"][:5] < 10).all()  # neither val/test (+1000) nor padding (-5000) entered
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert torch.equal(last["standardization"]["mean"], best["standardize.mean"])
    assert last["members"]["main"]["model"]["standardize.mean"].equal(best["standardize.mean"])


def test_streaming_statistics_equal_scikit_learn(tmp_path):
    from sklearn.preprocessing import StandardScaler

    store = make_store(tmp_path, views=2)
    reader = open_store(store)
    ids = [video_id for video_id in reader.video_ids if video_id.startswith("train")]
    stats = feature_statistics(reader, ids)
    scaler = StandardScaler().fit(train_nodes(store))
    assert np.allclose(stats.mean, scaler.mean_, rtol=1e-12) and np.allclose(stats.std, scaler.scale_, rtol=1e-10)
    assert stats.count == len(train_nodes(store)) and stats.videos == 6 and stats.constant == 1


def test_no_valid_train_node_is_one_line(tmp_path):
    class Empty:
        def read(self, video_id, names):
            return {"nodes": np.zeros((1, 2, 2, DIM)), "valid": np.zeros((1, 2, 2), dtype=bool)}

    with pytest.raises(UsageError, match="feats.h5: data.standardize=train found no valid node"):
        feature_statistics(Empty(), ["a", "b"], where="feats.h5")


@pytest.mark.parametrize("view", VIEWS)
def test_the_model_with_statistics_equals_the_model_without_on_standardised_inputs(view):
    torch.manual_seed(0)
    plain = ContextGraphNet(DIM, 4, view, hidden=8, layers=2)
    standardised = ContextGraphNet(DIM, 4, view, hidden=8, layers=2)
    standardised.load_state_dict(plain.state_dict())
    mean, std = torch.randn(DIM) * 3, torch.rand(DIM) + 0.5
    standardised.standardize.set(mean, std)
    nodes, valid = torch.randn(2, FRAMES, BOXES, DIM) * 2 + 5, torch.rand(2, FRAMES, BOXES) > 0.3
    assert torch.allclose(standardised(nodes, valid), plain((nodes - mean) / std, valid), atol=1e-6)
    padded = nodes.masked_fill(~valid.unsqueeze(-1), 1e4)  # padding stays masked after standardisation
    assert torch.allclose(standardised(padded, valid), standardised(nodes, valid), atol=1e-6)
    assert set(standardised.state_dict()) - set(plain.state_dict()) == {"standardize.mean", "standardize.std"}


def test_statistics_are_refused_unless_finite_and_positive():
    slot = FeatureStandardization()
    with pytest.raises(ValueError, match="std finite and positive"):
        slot.set(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"must be \(D,\)"):
        slot.set(torch.zeros(3), torch.ones(4))
    assert not slot.active and torch.equal(slot(torch.ones(2, 3)), torch.ones(2, 3))


def test_best_pt_rebuilds_with_its_statistics(tmp_path):
    """A model built from best.pt's config alone (as outputs, eval, show and teachers do) applies the same statistics."""
    store = make_store(tmp_path)
    run = tmp_path / "run"
    train(request(store, run, view="local", train__epochs=2, data__standardize="train"))
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    model = build_model(best["model_config"], best["in_dim"], best["num_classes"])
    assert not cast_slot(model).active
    model.load_state_dict(best["model"])
    assert cast_slot(model).active
    model.eval()
    outputs = load_run(run)
    reader = open_store(store)
    for row in np.flatnonzero(outputs.split == "test"):
        arrays = reader.read(str(outputs.video_ids[row]))
        with torch.no_grad():
            logits = model(
                torch.from_numpy(arrays["nodes"][:1].astype(np.float32)), torch.from_numpy(arrays["valid"][:1])
            )
        assert np.allclose(logits.numpy()[0], outputs.logits[row], atol=1e-5)


def cast_slot(model) -> FeatureStandardization:
    slot = standardization_of(model)
    assert slot is not None
    return slot


def test_resume_reuses_the_statistics_and_refuses_a_changed_setting(tmp_path, monkeypatch):
    store = make_store(tmp_path)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(request(store, run, train__epochs=3, data__standardize="train"), on_epoch_end=_stop_after(1))
    with pytest.raises(UsageError, match=re.escape("data.standardize: 'train' -> 'none'")):
        train(request(store, run, train__epochs=3, resume=True))

    def recomputed(*args, **kwargs):
        raise AssertionError("a resumed run recomputed the statistics")

    monkeypatch.setattr(loop, "feature_statistics", recomputed)
    result = train(request(store, run, train__epochs=3, resume=True, data__standardize="train"))
    assert result.trained_epochs == 2
    mean, _ = reference(store, views=1)
    assert np.allclose(load_checkpoint(run / "checkpoints" / "best.pt")["model"]["standardize.mean"], mean, rtol=1e-6)


def test_without_the_setting_nothing_changes(tmp_path):
    store = make_store(tmp_path)
    train(request(store, tmp_path / "run", train__epochs=1))
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"]
    assert not any(key.startswith("standardize.") for key in best)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["standardization"] is None


@pytest.mark.parametrize("distill", [False, True])
def test_the_paper_presets_keep_the_features_raw_and_the_demo_preset_standardises(distill):
    """The paper trains on raw I3D / ResNet features: a preset that silently differs from it is a bug."""
    for preset in ("cad120", "charades-i3d"):
        for view in VIEWS:
            config = resolve_training_config(distill, preset, None, {"model.view": view}, (), view)
            assert config["data"]["standardize"] == "none", preset
    assert resolve_training_config(distill, None)["data"]["standardize"] == "none"  # the default too
    for view in VIEWS:  # the demo's departure, for every view (the baseline included)
        assert (
            resolve_training_config(distill, "demo", None, {"model.view": view}, (), view)["data"]["standardize"]
            == "train"
        )


def test_dual_attention_standardises_its_node_regions_and_refuses_cells(tmp_path):
    """Node regions are the nodes the statistics describe: a dual_attention run carries them in best.pt. Map cells
    are not, so standardising them is refused before any file; a model without a slot is refused too."""
    from test_dual_attention_cli import TINY, with_objects
    from test_train import make_features

    from hoitool.nn.dual_attention import DualAttentionNet

    features = make_features(tmp_path)
    with_objects(features)
    train(request(features, tmp_path / "run", data__standardize="train", **TINY))
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")["model"]
    assert best["standardize.std"].gt(0).all() and best["standardize.mean"].shape == best["project.weight"].shape[1:]
    net = DualAttentionNet(8, 3, 2, temporal="mean", hidden=8, prior_hidden=8, attention_dim=8, head_hidden=8)
    net.eval()
    regions, valid = torch.randn(2, 3, 4, 8), torch.ones(2, 3, 4, dtype=torch.bool)
    raw = net(regions, valid).action
    slot = standardization_of(net)
    assert slot is not None
    slot.set(torch.full((8,), 1.0), torch.full((8,), 2.0))
    assert torch.allclose(net(regions * 2.0 + 1.0, valid).action, raw, atol=1e-6)  # (x*2+1 - 1) / 2 = x
    with pytest.raises(UsageError, match="not the feature-map cells"):
        train(request(features, tmp_path / "cells", data__standardize="train", dual_attention__regions="cells", **TINY))
    assert not (tmp_path / "cells").exists()
