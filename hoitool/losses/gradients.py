"""How much of the gradient each loss term carries: the per-term gradient share logged every epoch.

For named per-sample terms ``L_k`` with weights ``w_k`` (:meth:`hoitool.losses.Objective.weights`),
the batch loss is ``sum_k w_k * sum_i a_i L_k,i`` (``a_i`` the per-sample weights, 1/B). Term ``k``'s
gradient at the model outputs ``z`` (the logits, plus whatever other outputs a method's term reads) is
``g_k = d(w_k sum_i a_i L_k,i) / dz``; its **share** is ``||g_k|| / sum_j ||g_j||`` (Frobenius norms).
The shares of one objective sum to 1; a term of weight 0 has share 0.

Why at the outputs and not at the parameters: every term reaches the parameters only through the
outputs, so the outputs are where the terms compete, and ``autograd.grad`` down to them runs through
the loss functions only (a few (B, C) tensors), not through the model: cheap enough for every step.
(mdistiller logs each term's value; the share says what the optimizer actually receives.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def combine(terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """The per-sample total ``sum_k w_k * L_k`` over the weighted terms (a term without weight is only logged)."""
    total: torch.Tensor | float = 0.0
    for name, weight in weights.items():
        total = total + weight * terms[name]
    return total  # type: ignore[return-value]  # at least one weighted term: a tensor


def gradient_norms(
    terms: Mapping[str, torch.Tensor],
    weights: Mapping[str, float],
    sample_weights: torch.Tensor,
    outputs: Sequence[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """``||d(w_k * sum_i a_i L_k,i) / d outputs||`` per weighted term (0-d tensors; no host sync).

    ``outputs`` are tensors the terms were computed from (e.g. the logits); the graph is kept for
    the training step's own backward. A term that does not reach ``outputs`` gets norm 0.
    """
    import torch

    norms = {}
    for name, weight in weights.items():
        value = (terms[name] * sample_weights).sum() * weight
        if not value.requires_grad:
            norms[name] = torch.zeros((), dtype=torch.float64, device=sample_weights.device)
            continue
        grads = torch.autograd.grad(value, list(outputs), retain_graph=True, allow_unused=True)
        squared = [grad.double().pow(2).sum() for grad in grads if grad is not None]
        norms[name] = (
            torch.stack(squared).sum().sqrt()
            if squared
            else torch.zeros((), dtype=torch.float64, device=sample_weights.device)
        )
    return norms


def shares(norms: Mapping[str, float]) -> dict[str, float]:
    """Each norm divided by their sum (all 0 when every norm is 0)."""
    total = sum(norms.values())
    return {name: (value / total if total > 0 else 0.0) for name, value in norms.items()}
