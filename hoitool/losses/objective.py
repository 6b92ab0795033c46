"""The GLIDN training objective: ``lambda1 * supervised + lambda2 * distill``, the distill term from the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hoitool.losses.functional import supervised_loss
from hoitool.losses.registry import get_distill_loss

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Objective:
    """``total = lambda1 * supervised + lambda2 * distill`` (distill only when ``distill`` names a loss).

    ``distill`` is a name of :func:`hoitool.losses.list_distill_losses`, checked when the
    objective is built (before any batch). ``__call__`` returns the per-sample terms
    ``{"ce", "distill", "total"}`` (``ce`` is the supervised term, CE or BCE); the teacher
    logits are detached.
    """

    multilabel: bool
    distill: str | None = None
    temperature: float = 1.0
    lambda1: float = 1.0
    lambda2: float = 0.0

    def __post_init__(self) -> None:
        if self.distill is not None:
            get_distill_loss(self.distill)  # an unknown name fails here, not at the first batch

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        ce = supervised_loss(logits, targets, self.multilabel)
        if self.distill is None:
            return {"ce": ce, "total": ce}
        if teacher is None:
            raise ValueError("a distillation objective needs teacher logits")
        distill = get_distill_loss(self.distill)(logits, teacher.detach(), self.temperature)
        return {"ce": ce, "distill": distill, "total": self.lambda1 * ce + self.lambda2 * distill}
