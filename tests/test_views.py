"""Training views: random clip x crop x flip per video and epoch (on by default), flipped extraction, clip labels."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from test_train import make_features, request

from hoitool.errors import UsageError
from hoitool.extract.features import mirror_boxes
from hoitool.manifest import Manifest, VideoEntry
from hoitool.store import StagedStore, open_store
from hoitool.train.data import EpochBatchSampler, ViewDataset, clip_labels, clip_targets, split_videos
from hoitool.train.loop import train
from hoitool.train.presets import resolve_training_config


def _views_drawn(sampler: EpochBatchSampler, epoch: int) -> dict[int, int]:
    sampler.set_epoch(epoch)
    return {ref.position: ref.view for batch in sampler for ref in batch}


def test_random_view_is_the_default_and_can_be_turned_off():
    assert resolve_training_config(False, None)["data"]["random_view"] is True
    assert resolve_training_config(False, "charades-i3d")["data"]["random_view"] is True
    off = resolve_training_config(False, "charades-i3d", None, None, ["data.random_view=false"])
    assert off["data"]["random_view"] is False


def test_the_views_of_an_epoch_are_a_function_of_seed_and_epoch():
    sampler = EpochBatchSampler(10, 4, seed=3, num_views=6, random_view=True)
    first = _views_drawn(sampler, 5)
    again = EpochBatchSampler(10, 4, seed=3, num_views=6, random_view=True)
    again.load_state_dict(sampler.state_dict())  # a resumed run's sampler
    assert _views_drawn(again, 5) == first
    assert _views_drawn(sampler, 6) != first  # another epoch, other views
    assert _views_drawn(EpochBatchSampler(10, 4, seed=4, num_views=6, random_view=True), 5) != first
    assert set(_views_drawn(EpochBatchSampler(10, 4, seed=3, num_views=6, random_view=False), 5).values()) == {0}


def test_training_from_a_multi_view_store_sees_every_view(tmp_path, monkeypatch):
    """Default config: the views served are the sampler's draws, and over the epochs every view is seen."""
    views, epochs = 3, 6
    features = make_features(tmp_path, views=views)
    served: list[tuple[int, int]] = []
    original = ViewDataset.__getitem__

    def recording(self, ref):
        sample = original(self, ref)
        if self.videos.split == "train" and ref.weight > 0:
            served.append((ref.position, sample["view"]))
        return sample

    monkeypatch.setattr(ViewDataset, "__getitem__", recording)
    train(request(features, tmp_path / "run", train__epochs=epochs, model__hidden=8))

    sampler = EpochBatchSampler(8, 4, seed=0, num_views=views, random_view=True)
    expected = [
        (position, view) for epoch in range(1, epochs + 1) for position, view in _views_drawn(sampler, epoch).items()
    ]
    assert sorted(served) == sorted(expected)
    counts = Counter(view for _, view in served)
    assert sorted(counts) == list(range(views)) and sum(counts.values()) == 8 * epochs  # every view, counted
    per_video = {position: {view for p, view in served if p == position} for position in range(8)}
    assert sum(len(seen) for seen in per_video.values()) > 8  # not one fixed view per video


def test_the_student_distills_from_the_teachers_logits_of_the_view_it_sees(tmp_path, monkeypatch):
    from hoitool.runs import load_run
    from hoitool.train.fit import Fitting

    features = make_features(tmp_path, views=3)
    train(request(features, tmp_path / "teacher", train__epochs=1, model__hidden=8))
    teacher = load_run(tmp_path / "teacher")
    by_view = {
        (str(video), int(view)): teacher.logits[row]
        for row, (video, view, split) in enumerate(
            zip(teacher.video_ids, teacher.view_index, teacher.split, strict=True)
        )
        if split == "train"
    }
    recorded = []
    original = Fitting._distill_target

    def recording(self, position, logits, batch):
        target = original(self, position, logits, batch)
        recorded.append((batch["index"].tolist(), batch["view"].tolist(), target.detach().clone()))
        return target

    monkeypatch.setattr(Fitting, "_distill_target", recording)
    student = tmp_path / "student"
    train(request(features, student, kind="student", view="local", teacher=tmp_path / "teacher", train__epochs=2))
    train_ids = split_videos(Manifest.load(tmp_path / "manifest.json"), open_store(features).video_ids, "train")
    views_used = set()
    for positions, views, targets in recorded:
        for row, (position, view) in enumerate(zip(positions, views, strict=True)):
            np.testing.assert_allclose(targets[row].numpy(), by_view[(train_ids.video_ids[position], view)], atol=1e-6)
            views_used.add(view)
    assert recorded and len(views_used) > 1  # random views, each distilled from its own teacher logits


def test_mirror_boxes_by_hand():
    boxes = np.array([[[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 0.0, 0.0]]], dtype=np.float32)
    valid = np.array([[True, False]])
    mirrored = mirror_boxes(boxes, valid, 100)
    assert mirrored[0, 0].tolist() == [70.0, 5.0, 90.0, 25.0] and mirrored[0, 1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert np.array_equal(mirror_boxes(mirrored, valid, 100), boxes)


@pytest.mark.slow
def test_flip_stores_mirrored_views_equal_to_roi_align_on_the_mirrored_frames(tmp_path):
    from torchvision.ops import roi_align

    from hoitool.datasets.synthetic import generate
    from hoitool.extract.boxes import extract_boxes
    from hoitool.extract.features import extract_features
    from hoitool.features.backbones import build_backbone
    from hoitool.features.transforms import prepare_frames
    from hoitool.video.reader import read_frames

    generate(tmp_path / "data", videos_per_class=1, num_frames=6, size=64, seed=1)
    runtime = {"workers": 0}
    extract_boxes(
        tmp_path / "data", tmp_path / "boxes.h5", {"source": "dataset", "frames": 3, "top_k": 3, "runtime": runtime}
    )
    config = {
        "backbone": {"arch": "resnet18", "weights": "random"},
        "short_side": 64,
        "flip": True,
        "runtime": {"device": "cpu", "workers": 0},
    }
    extract_features(tmp_path / "boxes.h5", tmp_path / "f.h5", config)
    store = open_store(tmp_path / "f.h5")
    assert int(store.attrs["views"]) == 2
    video_id = store.video_ids[0]
    stored = store.read(video_id)
    width = int(stored["frame_size"][1])
    assert np.array_equal(stored["boxes"][1], mirror_boxes(stored["boxes"][0], stored["valid"][0], width))
    assert np.array_equal(stored["frame_indices"][1], stored["frame_indices"][0])

    manifest = Manifest.load(tmp_path / "data")
    video = manifest.by_id()[video_id]
    frames = read_frames(manifest.source_path(video), video.kind, stored["frame_indices"][0])
    backbone = build_backbone("resnet18", None, "random", seed=0)
    images, transform = prepare_frames(frames, 64, mean=backbone.mean, std=backbone.std)
    fmap = backbone.feature_map(torch.flip(images, dims=[-1]))  # the mirrored frames, flipped independently
    boxes = torch.from_numpy(stored["boxes"][0]).clone()
    boxes[..., [0, 2]] = width - boxes[..., [2, 0]]  # mirrored by hand
    image_boxes, _ = transform.to_image(boxes)
    valid = stored["valid"][1]
    assert valid.any()
    for t, k in zip(*np.nonzero(valid), strict=False):
        roi = torch.cat([torch.tensor([[t]], dtype=torch.float32), image_boxes[t, k][None]], dim=1)
        direct = roi_align(fmap, roi, 7, spatial_scale=1 / backbone.stride, sampling_ratio=2, aligned=True)
        expected = direct.amax(dim=(-2, -1))[0].numpy()
        np.testing.assert_allclose(stored["nodes"][1, t, k].astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    assert not np.array_equal(stored["nodes"][0], stored["nodes"][1])


# -- clip-level labels --------------------------------------------------------------------------------


def test_clip_targets_by_hand():
    """24 fps; view 0 samples frames 0..48 (0 s .. 2 s), view 1 frames 72..120 (3 s .. 5 s; 120 padding)."""
    frame_indices = np.array([[0, 24, 48], [72, 96, 120]])
    frame_valid = np.array([[True, True, True], [True, True, False]])  # view 1 really ends at 96 (4 s)
    actions = [(0, 0.5, 1.0), (1, 1.9, 3.2), (2, 4.0, 9.0), (3, 4.1, 9.0), (1, 10.0, 11.0)]
    targets = clip_targets(actions, frame_indices, frame_valid, 24.0, 5)
    # view 0 spans [0, 2]: action 0 inside, action 1 starts at 1.9 <= 2; view 1 spans [3, 4]: action 1 ends at
    # 3.2 >= 3, action 2 starts at 4.0 <= 4 (closed intervals, as PySlowFast's per-frame rule), action 3 at 4.1 not
    assert targets.tolist() == [[1, 1, 0, 0, 0], [0, 1, 1, 0, 0]]
    assert not clip_targets([], frame_indices, frame_valid, 24.0, 5).any()  # no action: an all-zero target


def _clip_dataset(root, fps=24.0, with_actions=True, multilabel=True):
    """Two train videos (and one val) with action intervals; the store's two views cover [0, 2] s and [3, 4] s."""
    extra = {"actions": [[0, 0.0, 1.5], [2, 3.5, 6.0]]} if with_actions else {}
    videos = [
        VideoEntry(id="a", source="a.mp4", labels=[0, 2], split="train", fps=fps, extra=dict(extra)),
        VideoEntry(id="b", source="b.mp4", labels=[1], split="train", fps=fps, extra={"actions": [[1, 0.0, 9.0]]}),
        VideoEntry(id="v", source="v.mp4", labels=[1], split="val", fps=fps),
    ]
    if not multilabel:
        for video in videos:
            video.labels = video.labels[:1]
    Manifest(dataset="tiny", classes=["x", "y", "z"], multilabel=multilabel, videos=videos).save(root / "manifest.json")
    staged = StagedStore(root / "f.h5", "features", {"config": {}, "upstream": None})
    rng = np.random.default_rng(0)
    for video in videos:
        staged.save(
            video.id,
            {
                "nodes": rng.normal(size=(2, 3, 2, 8)).astype(np.float16),
                "valid": np.ones((2, 3, 2), dtype=bool),
                "boxes": np.tile(np.array([0, 0, 10, 10], dtype=np.float32), (2, 3, 2, 1)),
                "frame_size": np.array([64, 64]),
                "frame_valid": np.ones((2, 3), dtype=bool),
                "frame_indices": np.array([[0, 24, 48], [72, 84, 96]]),
            },
        )
    staged.finalize({"manifest": str((root / "manifest.json").resolve())}, {"views": 2, "dim": 8})
    return root / "f.h5"


def test_clip_labels_of_a_tiny_manifest_equal_the_hand_computation(tmp_path):
    features = _clip_dataset(tmp_path)
    manifest, reader = Manifest.load(tmp_path / "manifest.json"), open_store(features)
    labelled = clip_labels(manifest, reader, split_videos(manifest, reader.video_ids, "train"))
    # a: action 0 on [0, 1.5] overlaps view 0 only, action 2 on [3.5, 6] view 1 only; b: action 1 covers both
    assert labelled.view_targets.tolist() == [[[1, 0, 0], [0, 0, 1]], [[0, 1, 0], [0, 1, 0]]]
    assert labelled.targets.tolist() == [[1, 0, 1], [0, 1, 0]]  # the video labels stay (outputs, eval)
    assert labelled.target(0, 1).tolist() == [0, 0, 1]


def test_training_with_clip_labels_uses_them_for_train_only(tmp_path, monkeypatch):
    features = _clip_dataset(tmp_path)
    served = []
    original = ViewDataset.__getitem__

    def recording(self, ref):
        sample = original(self, ref)
        served.append(
            (self.videos.split, self.videos.video_ids[ref.position], sample["view"], sample["target"].tolist())
        )
        return sample

    monkeypatch.setattr(ViewDataset, "__getitem__", recording)
    run = tmp_path / "run"
    train(request(features, run, train__epochs=2, train__batch_size=2, model__hidden=8, data__labels="clip"))
    hand = {("a", 0): [1, 0, 0], ("a", 1): [0, 0, 1], ("b", 0): [0, 1, 0], ("b", 1): [0, 1, 0]}
    train_served = [entry for entry in served if entry[0] == "train"]
    assert train_served and all(target == hand[(video, view)] for _, video, view, target in train_served)
    assert all(target == [0, 1, 0] for split, _, _, target in served if split == "val")  # video labels
    assert json.loads((run / "run.json").read_text())["multilabel"] is True


def test_clip_labels_are_refused_in_one_line_before_any_work(tmp_path):
    for name, kwargs, message in (
        ("single", {"multilabel": False}, "single-label: use data.labels=video"),
        ("bare", {"with_actions": False}, "1 of 2 lack them, e.g. 'a'"),
        ("nofps", {"fps": None}, "needs video 'a''s frame rate: the manifest has no fps"),
    ):
        root = tmp_path / name
        root.mkdir()
        features = _clip_dataset(root, **kwargs)
        with pytest.raises(UsageError, match=message):
            train(request(features, root / "run", model__hidden=8, data__labels="clip"))
        assert not (root / "run").exists()
