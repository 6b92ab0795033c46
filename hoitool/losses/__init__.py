"""Losses on a floor below ``nn`` and ``train``: per-sample loss functions, the distillation-loss registry, Objective.

Add a distillation loss with one decorated function (in :mod:`hoitool.losses.functional`, or in your
own code before the config is validated)::

    @register_distill_loss("cosine")
    def cosine_loss(student, teacher, temperature):  # (B, C), (B, C), float -> (B,)
        ...

The convention every registered loss keeps: its gradient's scale does not depend on the temperature, so
``lambda2`` means the same at every ``T``. The built-ins multiply by ``T^2`` for that (Hinton's ``kd``; ``l2``
and ``bce`` likewise, derivation in :mod:`hoitool.losses.functional`). How much of the gradient each
term then carries is logged per epoch (:mod:`hoitool.losses.gradients`, ``grad_share_<term>``).

Importing this package loads no torch (the functions import it when called).
"""

from hoitool.losses.functional import binary_kd_loss, kd_loss, l2_loss, supervised_loss, weighted_sum
from hoitool.losses.objective import Objective
from hoitool.losses.registry import (
    AUTO,
    DistillLoss,
    get_distill_loss,
    list_distill_losses,
    register_distill_loss,
)

__all__ = [
    "AUTO",
    "DistillLoss",
    "Objective",
    "binary_kd_loss",
    "get_distill_loss",
    "kd_loss",
    "l2_loss",
    "list_distill_losses",
    "register_distill_loss",
    "supervised_loss",
    "weighted_sum",
]
