"""The GLIDN training objective as named weighted terms: ``lambda1 * supervised + lambda2 * distill``.

An objective is a set of **named per-sample terms** and their **weights**; the total is their weighted
sum (:func:`hoitool.losses.gradients.combine`). The training loop logs every term (``loss_<name>``)
and its gradient share (``grad_share_<name>``, :mod:`hoitool.losses.gradients`) without knowing the
names, so a method that adds a term (anticipation, contrastive, dual attention) adds one entry to
``terms`` and one to ``weights`` and is logged and measured like ``ce`` and ``distill``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hoitool.losses.functional import supervised_loss
from hoitool.losses.gradients import combine
from hoitool.losses.registry import get_distill_loss

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Objective:
    """``total = lambda1 * ce + lambda2 * distill`` (distill only when ``distill`` names a loss; else ``total = ce``).

    ``distill`` is a name of :func:`hoitool.losses.list_distill_losses`, checked when the
    objective is built (before any batch). :meth:`terms` gives the unweighted per-sample terms
    (``ce`` is the supervised term, CE or BCE), :meth:`weights` their weights, ``__call__`` both
    combined: ``{"ce", "distill", "total"}``. The teacher logits are detached.
    """

    multilabel: bool
    distill: str | None = None
    temperature: float = 1.0
    lambda1: float = 1.0
    lambda2: float = 0.0

    def __post_init__(self) -> None:
        if self.distill is not None:
            get_distill_loss(self.distill)  # an unknown name fails here, not at the first batch

    def weights(self) -> dict[str, float]:
        """The weight of each term in the total (a teacher's single term weighs 1, whatever lambda1 says)."""
        if self.distill is None:
            return {"ce": 1.0}
        return {"ce": self.lambda1, "distill": self.lambda2}

    def terms(
        self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The unweighted per-sample terms ``(B,)`` by name."""
        ce = supervised_loss(logits, targets, self.multilabel)
        if self.distill is None:
            return {"ce": ce}
        if teacher is None:
            raise ValueError("a distillation objective needs teacher logits")
        return {"ce": ce, "distill": get_distill_loss(self.distill)(logits, teacher.detach(), self.temperature)}

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        terms = self.terms(logits, targets, teacher)
        return {**terms, "total": combine(terms, self.weights())}
