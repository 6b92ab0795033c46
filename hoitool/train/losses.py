"""Training objectives: the supervised term, the three distillation terms, and their weighted sum.

Every function returns one value **per sample** (shape ``(B,)``); the training
loop reduces them with per-sample weights. That keeps the batch mean exact
when a global batch is split unevenly across DDP ranks, and lets each term be
logged on its own.

Per-sample values, averaged over the batch, equal the usual definitions:

* ``kd``  -- Hinton et al.: ``KL(softmax(t/T) || softmax(s/T)) * T^2`` summed over
  classes, i.e. ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T*T``.
  The ``T^2`` keeps the gradient scale independent of ``T`` (torchdistill drops it
  in one branch: a bug we do not copy).
* ``l2``  -- GLIDN Eq. 3 for multi-label data: the squared difference of the
  softened sigmoids ``sigmoid(t/T)`` and ``sigmoid(s/T)``, mean over classes.
* ``bce`` -- the multi-label analogue of ``kd``: per-class binary
  ``KL(sigmoid(t/T) || sigmoid(s/T)) * T^2``, mean over classes. It equals the
  BCE of ``s/T`` against the soft target ``sigmoid(t/T)`` minus the (constant)
  entropy of that target, so it is 0 when the student matches the teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DISTILL_LOSSES = ("kd", "l2", "bce")


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Cross-entropy (single-label, integer targets) or BCE-with-logits (multi-hot targets, mean over classes)."""
    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").mean(dim=1)
    return F.cross_entropy(logits, targets.long(), reduction="none")


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    log_student = F.log_softmax(student.float() / temperature, dim=1)
    soft_teacher = F.softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_student, soft_teacher, reduction="none").sum(dim=1) * temperature * temperature


def l2_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    difference = torch.sigmoid(teacher.float() / temperature) - torch.sigmoid(student.float() / temperature)
    return difference.pow(2).mean(dim=1)


def binary_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    student_logits = student.float() / temperature
    teacher_logits = teacher.float() / temperature
    soft_teacher = torch.sigmoid(teacher_logits)
    cross = F.binary_cross_entropy_with_logits(student_logits, soft_teacher, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits, soft_teacher, reduction="none")
    return (cross - entropy).mean(dim=1) * temperature * temperature


_DISTILL_FUNCTIONS = {"kd": kd_loss, "l2": l2_loss, "bce": binary_kd_loss}


def distill_loss(name: str, student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    if name not in _DISTILL_FUNCTIONS:
        raise ValueError(f"unknown distillation loss {name!r} (known: {', '.join(DISTILL_LOSSES)})")
    return _DISTILL_FUNCTIONS[name](student, teacher.detach(), temperature)


@dataclass(frozen=True)
class Objective:
    """``total = lambda1 * supervised + lambda2 * distill`` (distill only when ``distill`` names a loss).

    ``__call__`` returns the per-sample terms ``{"ce", "distill", "total"}``
    (``ce`` is the supervised term, CE or BCE); the teacher logits are detached.
    """

    multilabel: bool
    distill: str | None = None
    temperature: float = 1.0
    lambda1: float = 1.0
    lambda2: float = 0.0

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        ce = supervised_loss(logits, targets, self.multilabel)
        if self.distill is None:
            return {"ce": ce, "total": ce}
        if teacher is None:
            raise ValueError("a distillation objective needs teacher logits")
        distill = distill_loss(self.distill, logits, teacher, self.temperature)
        return {"ce": ce, "distill": distill, "total": self.lambda1 * ce + self.lambda2 * distill}


def weighted_sum(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reduce a per-sample loss; with ``weights = 1/B`` this is the batch mean."""
    return (per_sample * weights).sum()
