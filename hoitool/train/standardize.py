"""``data.standardize=train``: the per-dimension mean and std of the train split's node features.

Random-weight CNN features (the demo's) share a large offset in every dimension (mean about 0.59
against a spread of 0.16 across nodes on the demo's store), which swamps what attention and pooling
can tell apart; z-scoring each dimension removes it. The statistics are computed once, when a run
starts fresh, over the **valid** nodes of the **train** split only (val and test never enter) and of
the views training reads (every stored view with ``data.random_view``, view 0 otherwise). They are
set into the model (:class:`hoitool.nn.standardize.FeatureStandardization`) and saved with it, so
resume, ``best.pt`` and everything that rebuilds a model apply the same numbers.

Streaming: one video's arrays in memory at a time, merged with Chan et al.'s pairwise update of
(count, mean, sum of squared deviations) in float64. The std is the population std (``ddof=0``,
as scikit-learn's ``StandardScaler``); a dimension whose std is below :data:`MIN_STD` (constant
over the train split) gets std 1, so it is only centred and nothing divides by zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hoitool.errors import UsageError

MIN_STD = 1e-6  # below this a dimension counts as constant: std 1 (centred only)


@dataclass(frozen=True)
class FeatureStatistics:
    """Per-dimension mean and std (float64, (D,)) of ``count`` valid nodes of ``videos`` train videos."""

    mean: np.ndarray
    std: np.ndarray
    count: int
    videos: int
    constant: int  # dimensions without spread (std set to 1)


class _Moments:
    """Running (count, mean, M2) per dimension, merged batch by batch (Chan, Golub & LeVeque 1979)."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)

    def add(self, x: np.ndarray) -> None:
        """Merge ``x`` (n, D)."""
        n = x.shape[0]
        if not n:
            return
        x = x.astype(np.float64, copy=False)
        batch_mean = x.mean(axis=0)
        batch_m2 = ((x - batch_mean) ** 2).sum(axis=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + batch_m2 + delta**2 * (self.count * n / total)
        self.count = total


def feature_statistics(reader, video_ids: list[str], views: int | None = None, where: str = "") -> FeatureStatistics:
    """Mean and std per dimension over the valid nodes of ``video_ids`` (the first ``views`` views; None: all).

    ``reader``: a features store reader (``read(video_id, names)`` -> nodes (V, T, K, D), valid (V, T, K)).
    """
    moments: _Moments | None = None
    for video_id in video_ids:
        arrays = reader.read(video_id, ["nodes", "valid"])
        nodes, valid = arrays["nodes"][:views], arrays["valid"][:views].astype(bool)
        if moments is None:
            moments = _Moments(nodes.shape[-1])
        moments.add(nodes[valid])
    if moments is None or moments.count == 0:
        raise UsageError(f"{where or 'features store'}: data.standardize=train found no valid node in the train split")
    std = np.sqrt(moments.m2 / moments.count)
    constant = std < MIN_STD
    std[constant] = 1.0
    return FeatureStatistics(moments.mean, std, moments.count, len(video_ids), int(constant.sum()))


def statistics_state(stats: FeatureStatistics) -> dict:
    """The statistics as ``last.pt`` keeps them (tensors and numbers: checkpoints are data)."""
    import torch

    return {
        "mean": torch.from_numpy(stats.mean.astype(np.float32)),
        "std": torch.from_numpy(stats.std.astype(np.float32)),
        "count": stats.count,
        "videos": stats.videos,
        "constant": stats.constant,
    }
