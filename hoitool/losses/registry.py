"""The registry of distillation losses, after torchvision's ``register_model`` / ``get_model`` / ``list_models``.

A distillation loss maps ``(student logits (B, C), teacher logits (B, C), temperature)`` to one value
per sample ``(B,)``, scaled so that its gradient does not fade with the temperature (the built-ins: times
``T^2``), so ``lambda2`` means the same at every ``T``. Registering one makes it a valid ``distill.loss`` (config, ``distill --loss``)
and usable by :class:`hoitool.losses.Objective`; nothing else needs to change. This module imports
no torch, so ``--help`` and config validation can list the names cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

from hoitool.errors import UsageError

if TYPE_CHECKING:
    import torch

AUTO = "auto"  # the config's "pick by the data" value (kd single-label, l2 multi-label); never a loss name


class DistillLoss(Protocol):
    def __call__(self, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor: ...


L = TypeVar("L", bound=DistillLoss)
_DISTILL_LOSSES: dict[str, DistillLoss] = {}


def register_distill_loss(name: str) -> Callable[[L], L]:
    """Decorator: register ``fn`` as the distillation loss ``name`` (a programming error if taken)."""

    def wrapper(fn: L) -> L:
        if not name or name == AUTO:
            raise ValueError(f"{name!r} cannot name a distillation loss")
        if name in _DISTILL_LOSSES:
            raise ValueError(f"a distillation loss is already registered as {name!r}")
        _DISTILL_LOSSES[name] = fn
        return fn

    return wrapper


def list_distill_losses() -> list[str]:
    """The registered names, sorted."""
    return sorted(_DISTILL_LOSSES)


def get_distill_loss(name: str) -> DistillLoss:
    """The loss registered as ``name``; an unknown name is a UsageError listing the registered ones."""
    if name not in _DISTILL_LOSSES:
        raise UsageError(f"unknown distillation loss {name!r} (registered: {', '.join(list_distill_losses())})")
    return _DISTILL_LOSSES[name]
