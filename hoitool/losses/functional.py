"""Per-sample loss functions of GLIDN: the supervised term and the distillation terms kd, l2, bce (all three times T^2).

Every function returns one value **per sample** (shape ``(B,)``); the training
loop reduces them with per-sample weights (:func:`weighted_sum`). That keeps the
batch mean exact when a global batch is split unevenly across DDP ranks, and lets
each term be logged on its own.

Per-sample values, averaged over the batch, equal the usual definitions:

* ``kd``  -- Hinton et al.: ``KL(softmax(t/T) || softmax(s/T)) * T^2`` summed over
  classes, i.e. ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="batchmean") * T*T``.
  The ``T^2`` keeps the gradient scale independent of ``T`` (torchdistill drops it
  in one branch: a bug we do not copy).
* ``l2``  -- GLIDN Eq. 3 for multi-label data: the squared difference of the
  softened sigmoids ``sigmoid(t/T)`` and ``sigmoid(s/T)``, mean over classes, times
  ``T^2`` as ``kd``: the gradient of Eq. 3 w.r.t. a logit is
  ``2 (sigmoid(s/T) - sigmoid(t/T)) sigmoid'(s/T) / (T C)``, which for ``T`` large
  against the logits is ``(s - t) / (8 T^2 C)`` (``sigmoid(x/T) ~ 1/2 + x/(4T)``), so
  unscaled it falls as ``1/T^2`` (at ``T = 10`` the term carried ~1% of the BCE
  gradient per unit weight on random logits, docs/training.md); scaled, it tends to
  ``(s - t) / (8 C)`` at every large ``T`` and is unchanged at ``T = 1``, so ``lambda2``
  means the same at every ``T``. (For ``T`` -> infinity ``T^2 * l2`` -> ``mean_c (s_c - t_c)^2 / 16``:
  logit matching, Hinton's limit of ``kd`` too.)
* ``bce`` -- the multi-label analogue of ``kd``: per-class binary
  ``KL(sigmoid(t/T) || sigmoid(s/T)) * T^2``, mean over classes. It equals the
  BCE of ``s/T`` against the soft target ``sigmoid(t/T)`` minus the (constant)
  entropy of that target, so it is 0 when the student matches the teacher.

torch is imported inside the functions: importing this module registers the names
(for ``--help`` and config validation) without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hoitool.losses.registry import register_distill_loss

if TYPE_CHECKING:
    import torch


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """Cross-entropy (single-label, integer targets) or BCE-with-logits (multi-hot targets, mean over classes)."""
    import torch.nn.functional as F

    logits = logits.float()
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none").mean(dim=1)
    return F.cross_entropy(logits, targets.long(), reduction="none")


@register_distill_loss("kd")
def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's softmax KD: ``KL(softmax(t/T) || softmax(s/T)) * T^2`` per sample."""
    import torch.nn.functional as F

    log_student = F.log_softmax(student.float() / temperature, dim=1)
    soft_teacher = F.softmax(teacher.float() / temperature, dim=1)
    return F.kl_div(log_student, soft_teacher, reduction="none").sum(dim=1) * temperature * temperature


@register_distill_loss("l2")
def l2_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """GLIDN Eq. 3 with Hinton's ``T^2``: ``mean_c (sigmoid(t_c/T) - sigmoid(s_c/T))^2 * T^2`` per sample."""
    import torch

    difference = torch.sigmoid(teacher.float() / temperature) - torch.sigmoid(student.float() / temperature)
    return difference.pow(2).mean(dim=1) * temperature * temperature


@register_distill_loss("bce")
def binary_kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-class binary ``KL(sigmoid(t/T) || sigmoid(s/T)) * T^2``, mean over classes (0 when s equals t)."""
    import torch
    import torch.nn.functional as F

    student_logits = student.float() / temperature
    teacher_logits = teacher.float() / temperature
    soft_teacher = torch.sigmoid(teacher_logits)
    cross = F.binary_cross_entropy_with_logits(student_logits, soft_teacher, reduction="none")
    entropy = F.binary_cross_entropy_with_logits(teacher_logits, soft_teacher, reduction="none")
    return (cross - entropy).mean(dim=1) * temperature * temperature


def weighted_sum(per_sample: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Reduce a per-sample loss; with ``weights = 1/B`` this is the batch mean."""
    return (per_sample * weights).sum()
