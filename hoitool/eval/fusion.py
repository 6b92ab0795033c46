"""Test-time view fusion: one score vector per video from its clip x crop views.

Scores are probabilities (sigmoid for multi-label, softmax for single-label),
fused per video by max (the literature's 10 clips x 3 crops protocol on
Charades) or mean. Fusing several runs first fuses each run's views, then the
runs, by the same rule, so every run weighs the same whatever its view count.
"""

from __future__ import annotations

import numpy as np

from hoitool.errors import UsageError

FUSION_RULES = ("max", "mean")


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Float64 sigmoid without overflow warnings for large negative logits."""
    x = np.asarray(logits, dtype=np.float64)
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    e = np.exp(x[~positive])
    out[~positive] = e / (1.0 + e)
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def probabilities(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    return sigmoid(logits) if multilabel else softmax(logits)


def fuse_views(video_ids: np.ndarray, scores: np.ndarray, targets: np.ndarray, rule: str):
    """Group rows by video and fuse their scores.

    Returns ``(ids, fused_scores, targets, views_per_video)`` with ids sorted, so
    the result does not depend on the order the rows were written in. Refuses
    views of one video whose targets disagree (a broken outputs file).
    """
    if rule not in FUSION_RULES:
        raise UsageError(f"unknown fusion rule {rule!r} (choose from {', '.join(FUSION_RULES)})")
    video_ids = np.asarray(video_ids).astype(str)
    ids, inverse, counts = np.unique(video_ids, return_inverse=True, return_counts=True)
    n, c = len(ids), scores.shape[1]
    order = np.argsort(inverse, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sorted_scores = np.asarray(scores, dtype=np.float64)[order]
    if rule == "max":
        fused = np.maximum.reduceat(sorted_scores, starts, axis=0) if n else np.zeros((0, c))
    else:
        fused = np.add.reduceat(sorted_scores, starts, axis=0) / counts[:, None] if n else np.zeros((0, c))
    sorted_targets = np.asarray(targets)[order]
    first_targets = sorted_targets[starts] if n else np.zeros((0, c), dtype=sorted_targets.dtype)
    disagree = (sorted_targets != np.repeat(first_targets, counts, axis=0)).any(axis=1)
    if disagree.any():
        video = video_ids[order][np.flatnonzero(disagree)[0]]
        raise UsageError(f"video {video}: its views have different targets")
    return ids, fused, first_targets, counts


def fuse_runs(fused: list[tuple[np.ndarray, np.ndarray, np.ndarray]], names: list[str], rule: str):
    """Fuse per-video scores of several runs (each already view-fused, ids sorted).

    Every run must cover the same videos with the same targets; otherwise the
    fused number would silently describe a different test set.
    """
    if rule not in FUSION_RULES:
        raise UsageError(f"unknown fusion rule {rule!r} (choose from {', '.join(FUSION_RULES)})")
    ids0, scores0, targets0 = fused[0]
    stack = [scores0]
    for (ids, scores, targets), name in zip(fused[1:], names[1:], strict=False):
        if len(ids) != len(ids0) or not (ids == ids0).all():
            only = sorted(set(ids0.tolist()) ^ set(ids.tolist()))
            example = f" (e.g. {only[0]})" if only else ""
            raise UsageError(f"{name}: covers different videos than {names[0]}{example}; cannot fuse")
        if scores.shape[1] != scores0.shape[1]:
            raise UsageError(f"{name}: {scores.shape[1]} classes, {names[0]} has {scores0.shape[1]}; cannot fuse")
        if not (targets == targets0).all():
            raise UsageError(f"{name}: targets differ from {names[0]}; cannot fuse")
        stack.append(scores)
    stacked = np.stack(stack)
    return ids0, (stacked.max(axis=0) if rule == "max" else stacked.mean(axis=0)), targets0
