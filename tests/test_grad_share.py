"""Per-term gradient shares (hoitool.losses.gradients) against closed forms, and the Charades preset's share."""

from __future__ import annotations

import math

import pytest
import torch

from hoitool.losses import Objective, get_distill_loss, supervised_loss
from hoitool.losses.gradients import combine, gradient_norms, shares
from hoitool.train.presets import PRESETS


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_share_of_bce_and_l2_on_two_logits_equals_the_closed_form():
    """s = (0, 0), y = (1, 0), teacher t: the gradients at s are known in closed form.

    BCE (mean over C = 2): dL/ds_c = (sigmoid(s_c) - y_c) / 2 = (-1/4, 1/4), norm sqrt(2) / 4.
    l2 (Eq. 3 times T^2): dL/ds_c = T^2 * 2 (sigmoid(0) - p_c) sigmoid'(0) / (T * 2) = T (1/2 - p_c) / 4,
    with p_c = sigmoid(t_c / T).
    """
    temperature, lambda1, lambda2 = 2.0, 0.6, 3.0
    teacher_logits = (3.0, -1.0)
    student = torch.zeros(1, 2, requires_grad=True)
    objective = Objective(multilabel=True, distill="l2", temperature=temperature, lambda1=lambda1, lambda2=lambda2)
    terms = objective.terms(student, torch.tensor([[1.0, 0.0]]), torch.tensor([teacher_logits]))
    norms = gradient_norms(terms, objective.weights(), torch.ones(1), [student])

    ce_norm = lambda1 * math.sqrt(2) / 4
    distill_norm = lambda2 * temperature / 4 * math.hypot(*(0.5 - _sigmoid(t / temperature) for t in teacher_logits))
    assert norms["ce"].item() == pytest.approx(ce_norm, rel=1e-6)
    assert norms["distill"].item() == pytest.approx(distill_norm, rel=1e-6)
    share = shares({name: value.item() for name, value in norms.items()})
    assert share["distill"] == pytest.approx(distill_norm / (ce_norm + distill_norm), rel=1e-6)
    assert share["ce"] + share["distill"] == pytest.approx(1.0)
    assert student.grad is None  # measuring leaves the graph and the gradients to the training step


def test_shares_are_generic_over_named_terms_and_weights():
    """A term added by a method is combined and measured like ce and distill; weight 0 means share 0."""
    logits = torch.tensor([[1.0, -2.0, 0.5]], requires_grad=True)
    terms = {
        "ce": supervised_loss(logits, torch.tensor([0]), False),
        "extra": (logits**2).sum(1),
        "logged": logits[:, 0],
    }
    weights = {"ce": 1.0, "extra": 0.0}
    assert torch.equal(combine(terms, weights), terms["ce"] + 0.0 * terms["extra"])
    norms = gradient_norms(terms, weights, torch.ones(1), [logits])
    assert set(norms) == {"ce", "extra"}  # only weighted terms are part of the loss
    assert shares({name: value.item() for name, value in norms.items()}) == {"ce": 1.0, "extra": 0.0}
    assert Objective(multilabel=False).weights() == {"ce": 1.0}


def test_a_term_that_does_not_reach_the_outputs_has_norm_zero():
    logits = torch.zeros(2, 3, requires_grad=True)
    other = torch.ones(2, requires_grad=True)
    norms = gradient_norms({"ce": logits.sum(1), "side": other * 2}, {"ce": 1.0, "side": 1.0}, torch.ones(2), [logits])
    assert norms["side"].item() == 0.0 and norms["ce"].item() == pytest.approx(math.sqrt(6))


def _random_share(temperature: float, lambda1: float, lambda2: float, loss, mean: float, std: float) -> float:
    """Distillation share on random 157-class logits (positive rate 0.03), student and teacher drawn alike."""
    generator = torch.Generator().manual_seed(0)
    batch, classes = 256, 157
    student = (torch.randn(batch, classes, generator=generator) * std + mean).requires_grad_(True)
    teacher = torch.randn(batch, classes, generator=generator) * std + mean
    targets = (torch.rand(batch, classes, generator=generator) < 0.03).float()
    terms = {"ce": supervised_loss(student, targets, True), "distill": loss(student, teacher, temperature)}
    norms = gradient_norms(terms, {"ce": lambda1, "distill": lambda2}, torch.full((batch,), 1 / batch), [student])
    return shares({name: value.item() for name, value in norms.items()})["distill"]


@pytest.mark.parametrize("mean, std", [(0.0, 1.0), (-3.5, 1.5)])  # zero-centred; a rare-positive prior (p ~ 0.03)
def test_charades_preset_gives_distillation_a_real_share(mean, std):
    """docs/training.md's figures: the old T=10, lambda2=4 without T^2 gave the l2 term 1-5% of the gradient."""
    preset = PRESETS["charades-i3d"].distill_by_teacher
    for view in ("global", "local"):
        settings = preset[view]
        share = _random_share(
            settings["T"], settings["lambda1"], settings["lambda2"], get_distill_loss("l2"), mean, std
        )
        assert 0.2 <= share <= 0.75, (view, share)

    def unscaled(student, teacher, temperature):  # Eq. 3 as hoitool computed it before the T^2
        return get_distill_loss("l2")(student, teacher, temperature) / temperature**2

    assert _random_share(10.0, 1.0, 4.0, unscaled, mean, std) < 0.06
