"""Small-sample statistics for benchmark and demo tables: bootstrap intervals, per-context accuracy, chance.

Numpy only (no scipy): a percentile bootstrap drawn in two stages, seeds with
replacement and then each drawn seed's test videos with replacement, so both
the seed-to-seed and the video-to-video variation widen an interval. A paired
difference between two methods is the same bootstrap of ``a - b`` on the same
videos and seeds. ``bench/synthetic.py``, the demo and ``hoitool report`` use it.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000


class Interval(NamedTuple):
    """A mean and its percentile-bootstrap interval."""

    mean: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def text(self, signed: bool = False) -> str:
        """``0.444 [0.431, 0.458]`` (``signed``: ``+0.333 [+0.317, +0.349]``, for differences)."""
        form = "{:+.3f}" if signed else "{:.3f}"
        return f"{form.format(self.mean)} [{form.format(self.low)}, {form.format(self.high)}]"


def bootstrap_mean(values, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """Mean of (S, V) per-seed, per-test-video values and its two-stage percentile-bootstrap interval.

    ``values`` may be (V,) for one seed. Every seed must have the same videos
    (the same test split), which is what makes a paired difference paired.
    """
    values = np.asarray(values, np.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"values must be (seeds, videos) and not empty, got shape {values.shape}")
    seeds, videos = values.shape
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 250):  # chunks bound the memory of the index arrays
        count = min(250, resamples - start)
        seed_index = rng.integers(seeds, size=(count, seeds, 1))
        video_index = rng.integers(videos, size=(count, seeds, videos))
        means[start : start + count] = values[seed_index, video_index].mean(axis=(1, 2))
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high))


def paired_difference(a, b, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0) -> Interval:
    """``a - b`` per (seed, video) on the same videos, bootstrapped as one sample (so the pairing counts)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values must have the same shape, got {a.shape} and {b.shape}")
    return bootstrap_mean(a - b, resamples, level, seed)


def context_accuracy(correct, contexts, order=None, resamples: int = RESAMPLES, seed: int = 0) -> dict[str, Interval]:
    """Accuracy over all videos and per context (e.g. local / cross-frame), each with its interval.

    ``correct`` is (S, V) or (V,) 0/1 per test video; ``contexts`` (V,) names each video's context.
    ``order`` fixes the contexts listed (default: as they first appear); an absent one is skipped.
    """
    correct = np.asarray(correct, np.float64)
    contexts = np.asarray(contexts)
    if correct.shape[-1] != contexts.shape[0]:
        raise ValueError(f"{correct.shape[-1]} videos of scores but {contexts.shape[0]} contexts")
    names = list(order) if order is not None else list(dict.fromkeys(contexts.tolist()))
    cells = {"all": bootstrap_mean(correct, resamples, seed=seed)}
    for name in names:
        mask = contexts == name
        if mask.any():
            cells[name] = bootstrap_mean(correct[..., mask], resamples, seed=seed)
    return cells


def chance_level(labels, num_classes: int) -> float:
    """Accuracy of the best constant guess on these labels: the largest class share (1/C when balanced)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return 1.0 / num_classes
    return float(np.bincount(labels, minlength=num_classes).max() / labels.size)


def at_chance(correct, chance: float, resamples: int = RESAMPLES, seed: int = 0) -> bool:
    """True when the chance level lies inside the bootstrap interval of the accuracy (or above it)."""
    interval = bootstrap_mean(correct, resamples, seed=seed)
    return interval.low <= chance
