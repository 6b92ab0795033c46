"""The feature-level synthetic set: the store's shapes, the class rules, no leaks, ceilings, and the benchmark's statistics.

The leak controls fit a logistic regression (scikit-learn) on thousands of
samples of what a model without the right relation sees, and check it is at
chance; the same pipeline on the relation each context needs is the positive
control (so each check can fail).
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hoitool.datasets.synthetic import CLASS_SETS, KINDS, colour_shift
from hoitool.datasets.synthetic_features import (
    SPLIT_KEYS,
    context_means,
    generate_split,
    view_ceilings,
)
from hoitool.errors import UsageError
from hoitool.eval.stats import bootstrap_mean

sklearn_linear = pytest.importorskip("sklearn.linear_model")
CHANCE = 1 / 9
VIDEOS = 300  # per class and split: 2700 videos per split


def load_bench():
    """bench/synthetic.py is a script, not a package: load it by path."""
    path = Path(__file__).resolve().parents[1] / "bench" / "synthetic.py"
    spec = importlib.util.spec_from_file_location("bench_synthetic", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_synthetic"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def splits():
    return {split: generate_split(split, VIDEOS, seed=7, dim=16) for split in ("train", "test")}


@pytest.fixture(scope="module")
def small():
    return generate_split("test", 20, seed=7, dim=16)


def fit_score(train_x, train_y, test_x, test_y) -> float:
    """Test accuracy of a standardised logistic regression (the linear readout a no-relation model has)."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    model = sklearn_linear.LogisticRegression(max_iter=300, C=1.0)
    model.fit((train_x - mean) / std, train_y)
    return float((model.predict((test_x - mean) / std) == test_y).mean())


def test_shapes_and_determinism():
    data = generate_split("train", 3, seed=1, frames=15, dim=8, slots=4)
    videos = 3 * len(CLASS_SETS["sharp"])
    assert data.nodes.shape == (videos, 15, 4, 8) and data.nodes.dtype == np.float32
    assert data.valid.shape == (videos, 15, 4) and data.valid[..., :2].all() and not data.valid[..., 2:].any()
    assert data.boxes.shape == (videos, 15, 4, 4) and data.frame_size.shape == (videos, 2)
    assert (data.boxes[..., 2:] > data.boxes[..., :2])[:, :, :2].all() and (data.boxes <= 128).all()
    assert np.array_equal(data.nodes, generate_split("train", 3, seed=1, frames=15, dim=8, slots=4).nodes)
    assert not np.allclose(data.nodes, generate_split("train", 3, seed=2, frames=15, dim=8, slots=4).nodes)
    assert not np.allclose(data.nodes, generate_split("test", 3, seed=1, frames=15, dim=8, slots=4).nodes)
    assert set(SPLIT_KEYS) == {"train", "val", "test", "unlabelled"}
    small = data.subset(data.labels == 0)
    assert len(small) == 3 and small.classes == data.classes


@pytest.mark.parametrize(
    "bad",
    [
        {"frames": 12},
        {"frames": 5, "class_set": "default"},
        {"dim": 4},
        {"slots": 1},
        {"videos_per_class": 0},
        {"split": "dev"},
        {"class_set": "huge"},
    ],
)
def test_bad_arguments(bad):
    arguments = {"split": "train", "videos_per_class": 2, **bad}
    with pytest.raises(UsageError):
        generate_split(**arguments)


def test_default_class_set_needs_only_thirds():
    data = generate_split("train", 2, frames=9, class_set="default")
    assert len(data.classes) == 6 and set(data.contexts) == {"local", "order"}


def test_class_rules_hold(small):
    data = small
    rules = CLASS_SETS["sharp"]
    for video in range(0, len(data), 7):
        rule, pairs = rules[data.labels[video]], [tuple(p) for p in data.frame_pairs[video]]
        turns = [pairs[start] for start in range(0, len(pairs), len(pairs) // rule.turns)]
        assert sorted({p for p, _ in pairs}) == [0, 1, 2] and sorted({o for _, o in pairs}) == [0, 1, 2]
        shifts = [colour_shift(p, o) for p, o in turns]
        if rule.context == "local":
            assert shifts == [rule.shift] * 3
        elif rule.context == "order":
            assert sorted(shifts) == [0, 1, 2]
        else:  # the returning pair: turns 1, 3, 5; the others once each
            assert turns[0] == turns[2] == turns[4] and len(set(turns)) == 3
            assert shifts[0] == rule.returns and sorted(shifts[1:4]) == [0, 1, 2]


def test_ceilings_by_construction(small):
    ceilings = view_ceilings(small)
    contexts = small.contexts
    assert context_means(ceilings["baseline"], contexts) == pytest.approx(
        {"local": CHANCE, "cross-frame": CHANCE, "order": CHANCE}
    )
    assert context_means(ceilings["local"], contexts) == pytest.approx(
        {"local": 1, "cross-frame": 1 / 6, "order": 1 / 6}
    )
    assert context_means(ceilings["global"], contexts) == pytest.approx(
        {"local": 1 / 6, "cross-frame": 1, "order": 1 / 6}
    )
    assert ceilings["ordered"] == pytest.approx(np.ones(9))


def per_video(data, features) -> np.ndarray:
    return features(data).reshape(len(data), -1)


def pooled(data):
    """The unordered box set: mean- and max-pooled descriptors over all boxes of the video."""
    flat = data.nodes[:, :, :2].reshape(len(data), -1, data.nodes.shape[-1])
    return np.concatenate([flat.mean(1), flat.max(1)], axis=1)


def descriptor_x_time(data):
    """Every box with its frame time: descriptor (outer) one-hot frame index, summed over the video."""
    frames = data.nodes.shape[1]
    return np.einsum("vtkd,te->vde", data.nodes[:, :, :2], np.eye(frames))


def same_frame_pairs(data):
    """Positive control (local): person x object outer product within each frame, max-pooled over frames
    (what the local view reads: the set of frames)."""
    return np.einsum("vtd,vte->vtde", data.nodes[:, :, 0], data.nodes[:, :, 1]).max(1)


def cross_frame_pairs(data):
    """Positive control (cross-frame): unordered pairs across frames, mean person x mean object (counts weigh in)."""
    return np.einsum("vd,ve->vde", data.nodes[:, :, 0].mean(1), data.nodes[:, :, 1].mean(1))


def ordered_pairs(data):
    """Positive control (order): object x object of frames t < t', summed (order matters)."""
    objects = data.nodes[:, :, 1]
    later = np.flip(np.cumsum(np.flip(objects, 1), 1), 1) - objects  # sum over t' > t
    return np.einsum("vtd,vte->vde", objects, later)


@pytest.mark.slow
def test_single_boxes_and_box_with_time_are_at_chance(splits):
    """Single boxes tell no class; a box with its frame time tells no local or cross-frame class.

    (The order classes are defined by which kind comes when, so a box with its
    time is allowed to tell them: that is the caveat of time encodings.)
    """
    rng = np.random.default_rng(0)
    order_free = {name: split.subset(split.context_of() != "order") for name, split in splits.items()}
    frames = splits["train"].nodes.shape[1]

    def boxes(data, with_time):
        nodes = data.nodes[:, :, :2]
        features = nodes.reshape(-1, nodes.shape[-1])
        if with_time:
            time = np.broadcast_to(np.eye(frames)[None, :, None], (len(data), frames, 2, frames)).reshape(-1, frames)
            features = np.concatenate(
                [features, time, np.einsum("nd,nt->ndt", features, time).reshape(len(features), -1)], 1
            )
        labels = np.repeat(data.labels, frames * 2)
        keep = rng.choice(len(labels), 8000, replace=False)
        return features[keep], labels[keep]

    score = fit_score(*boxes(splits["train"], False), *boxes(splits["test"], False))
    assert score < CHANCE + 0.03, score
    score = fit_score(*boxes(order_free["train"], True), *boxes(order_free["test"], True))
    assert score < 1 / 6 + 0.03, score


@pytest.mark.slow
def test_box_with_time_tells_the_order_classes(splits):
    """The positive control of the check above: the same features do tell the order classes."""
    train, test = (split.subset(split.context_of() == "order") for split in (splits["train"], splits["test"]))
    score = fit_score(
        per_video(train, descriptor_x_time), train.labels, per_video(test, descriptor_x_time), test.labels
    )
    assert score > 0.9, score


@pytest.mark.slow
def test_the_box_set_is_at_chance(splits):
    train, test = splits["train"], splits["test"]
    score = fit_score(per_video(train, pooled), train.labels, per_video(test, pooled), test.labels)
    assert score < CHANCE + 0.04, score


@pytest.mark.slow
@pytest.mark.parametrize("context", ["local", "cross-frame"])
def test_descriptor_x_time_tells_no_order_free_class(splits, context):
    """Pooled descriptor x frame time is the whole ordered video read linearly: it may see the turn structure
    (three or five turns: which context), but tells no local class and no cross-frame class from the others."""
    train, test = (split.subset(split.context_of() == context) for split in (splits["train"], splits["test"]))
    score = fit_score(
        per_video(train, descriptor_x_time), train.labels, per_video(test, descriptor_x_time), test.labels
    )
    assert score < 1 / 3 + 0.05, score


@pytest.mark.slow
@pytest.mark.parametrize(
    "features, context", [(same_frame_pairs, "local"), (cross_frame_pairs, "cross-frame"), (ordered_pairs, "order")]
)
def test_each_context_is_solved_by_its_relation(splits, features, context):
    """The relation a context needs separates its classes (among themselves) from the same descriptors."""
    train, test = (split.subset(split.context_of() == context) for split in (splits["train"], splits["test"]))
    score = fit_score(per_video(train, features), train.labels, per_video(test, features), test.labels)
    assert score > 0.9, score
    if context != "local":  # and the local relation cannot tell the non-local classes apart
        local = fit_score(
            per_video(train, same_frame_pairs), train.labels, per_video(test, same_frame_pairs), test.labels
        )
        assert local < 1 / 3 + 0.06, local


@pytest.mark.slow
def test_cross_frame_classes_need_the_counts(splits):
    """The box set (pooled descriptors) cannot tell the cross-frame classes apart."""
    train, test = (split.subset(split.context_of() == "cross-frame") for split in (splits["train"], splits["test"]))
    score = fit_score(per_video(train, pooled), train.labels, per_video(test, pooled), test.labels)
    assert score < 1 / 3 + 0.06, score


def test_the_set_of_boxes_and_of_frames_is_the_same_in_every_class_version(small):
    """What max pooling reads is literally identical across a scene's class versions, whatever the counts."""
    data = small
    for scene in range(5):
        versions = np.flatnonzero(data.scenes == scene)
        box_sets = {
            frozenset(map(tuple, data.nodes[v, :, :2].reshape(-1, data.nodes.shape[-1]).round(6))) for v in versions
        }
        assert len(box_sets) == 1
        frame_sets = {
            frozenset(map(tuple, data.nodes[v].reshape(data.nodes.shape[1], -1).round(6)))
            for v in versions
            if data.contexts[data.labels[v]] != "local"
        }
        assert len(frame_sets) == 1  # the local view's input, too, is the same for all six non-local classes


@pytest.mark.slow
def test_kinds_and_colours_are_in_the_descriptors(splits):
    """The descriptors carry what the rules read: object kind is decodable from single object boxes."""
    data = splits["train"]
    kinds = np.asarray([data.frame_pairs[v, 0, 1] for v in range(len(data))])  # object colour of frame 0
    score = fit_score(data.nodes[::2, 0, 1], kinds[::2], data.nodes[1::2, 0, 1], kinds[1::2])
    assert score > 0.95 and len(KINDS) == 3


# -- the benchmark's statistics and training loop -----------------------------------------------
def test_the_benchmark_uses_the_library_statistics():
    """Its intervals are hoitool.eval.stats' (tested in tests/test_stats.py), so the demo and it agree."""
    bench = load_bench()
    values = np.stack([np.zeros(50), np.ones(50)])
    assert bench.accuracy_cell(values, 4000) == bootstrap_mean(values, 4000).text() == "0.500 [0.000, 1.000]"
    assert bench.interval(values - 0.5, 4000) == "+0.000 [-0.500, +0.500]"


def test_a_run_stuck_at_chance_is_flagged_by_its_test_or_its_train_accuracy():
    bench = load_bench()
    stuck, learned = np.arange(900) % 9 == 0, np.arange(900) % 9 < 4  # 0.111 and 0.444 right

    def run(test, train):
        return bench.Run("global", test, None, float(train.mean()), 1, 0.0, 0.0, train)

    assert bench.flag(run(learned, learned), 1 / 9) == ""
    assert bench.flag(run(stuck, learned), 1 / 9) == "AT CHANCE"
    assert bench.flag(run(learned, stuck), 1 / 9) == "AT CHANCE"
    assert bench.flag(run(stuck, stuck), 1 / 9, ceiling=1 / 9) == "at chance (= its ceiling)"


def test_smoothing_control_matches_the_teacher_non_target_mass():
    bench = load_bench()
    teacher = np.random.default_rng(0).normal(0, 3, (50, 9)).astype(np.float32)
    labels = np.arange(50) % 9
    logits, epsilon = bench.smoothed_logits(labels, 9, teacher, temperature=4.0)
    soft_teacher = torch.softmax(torch.as_tensor(teacher) / 4.0, 1).numpy()
    soft = torch.softmax(torch.as_tensor(logits) / 4.0, 1).numpy()
    assert 1 - soft[np.arange(50), labels].mean() == pytest.approx(
        1 - soft_teacher[np.arange(50), labels].mean(), abs=1e-5
    )
    assert epsilon == pytest.approx(1 - soft_teacher[np.arange(50), labels].mean(), abs=1e-5)
    assert np.allclose(np.delete(soft, labels[0], axis=1)[0], epsilon / 8, atol=1e-6)


@pytest.mark.slow
def test_training_loop_runs_every_objective():
    bench = load_bench()
    torch.set_num_threads(1)
    data = {split: generate_split(split, 2, seed=0, dim=8) for split in ("train", "val", "test", "unlabelled")}
    settings = bench.Settings(hidden=8, epochs=2, batch=32)
    teacher = np.random.default_rng(0).normal(size=(len(data["train"]), 9)).astype(np.float32)
    extra = np.zeros((len(data["unlabelled"]), 9), np.float32)
    for view in bench.VIEWS:
        run, (logits,) = bench.train(
            view,
            data["train"],
            data["val"],
            data["test"],
            0,
            settings,
            teacher=teacher,
            extra=data["unlabelled"],
            extra_teacher=extra,
            eval_sets=(data["unlabelled"],),
        )
        assert logits.shape == (len(data["unlabelled"]), 9) and run.test_correct.shape == (len(data["test"]),)
        assert 1 <= run.best_epoch <= 2 and 0 <= run.train_accuracy <= 1
