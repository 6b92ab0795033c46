"""Per-dimension feature standardisation inside a model, so that its checkpoints carry the statistics.

``x -> (x - mean) / std`` over the last dimension, with ``mean`` and ``std`` fixed before training
(``data.standardize=train``: over the train split's valid nodes, :mod:`hoitool.train.standardize`).
They are buffers, not parameters: the optimizer never moves them, and every ``state_dict`` of the
model (``last.pt``, ``best.pt``) holds them, so whatever rebuilds the model from a checkpoint
(resume, outputs, ``eval``, ``show``, a teacher's embeddings) applies the same statistics without
recomputing them. Without statistics the module is the identity and adds nothing to the
``state_dict``: models and checkpoints of runs without standardisation are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


class FeatureStandardization(nn.Module):
    """``(x - mean) / std`` per feature dimension once :meth:`set` (or a checkpoint) gave the statistics.

    Shapes: ``x`` (..., D); ``mean``, ``std`` (D,). A dimension without spread is given ``std`` 1 by
    whoever computes the statistics (:func:`hoitool.train.standardize.feature_statistics`), so it is
    only centred; :meth:`set` refuses a ``std`` that is not positive, so nothing divides by zero.
    """

    mean: torch.Tensor | None
    std: torch.Tensor | None

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", None)
        self.register_buffer("std", None)

    @property
    def active(self) -> bool:
        return self.mean is not None

    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the statistics (before the model is wrapped for DDP, so every rank's buffers are the same)."""
        mean, std = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        if mean.dim() != 1 or mean.shape != std.shape:
            raise ValueError(f"standardisation: mean {tuple(mean.shape)} and std {tuple(std.shape)} must be (D,)")
        if not bool(torch.isfinite(mean).all()) or not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError("standardisation: mean must be finite and std finite and positive in every dimension")
        self.mean, self.std = mean.clone(), std.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"standardisation holds {self.mean.shape[0]}-d statistics, the input is {x.shape[-1]}-d")
        mean, std = self.mean.to(x.device, x.dtype), self.std.to(x.device, x.dtype)
        return (x - mean) / std

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        """A checkpoint that holds statistics gives them to a model built without (how best.pt is rebuilt)."""
        mean, std = state_dict.get(f"{prefix}mean"), state_dict.get(f"{prefix}std")
        if self.mean is None and mean is not None and std is not None:
            self.mean, self.std = torch.empty_like(mean), torch.empty_like(std)  # filled by the default loader
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors)


def standardization_of(model: nn.Module) -> FeatureStandardization | None:
    """The model's standardisation slot (its first :class:`FeatureStandardization`), or None when it has none."""
    for module in model.modules():
        if isinstance(module, FeatureStandardization):
            return module
    return None
