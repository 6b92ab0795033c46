"""Loss functions against hand computations and torch's own reductions."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli

from hoitool.errors import UsageError
from hoitool.losses import (
    Objective,
    binary_kd_loss,
    get_distill_loss,
    kd_loss,
    l2_loss,
    list_distill_losses,
    register_distill_loss,
    registry,
    supervised_loss,
    weighted_sum,
)
from hoitool.settings.base import validate
from hoitool.settings.training import DistillSettings, DistillStageSettings
from hoitool.train.presets import training_defaults


def test_kd_matches_batchmean_kl_times_t_squared():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(5, 7, generator=generator)
    teacher = torch.randn(5, 7, generator=generator) * 3
    temperature = 4.0
    reference = F.kl_div(
        F.log_softmax(student / temperature, 1), F.softmax(teacher / temperature, 1), reduction="batchmean"
    )
    assert kd_loss(student, teacher, temperature).mean().item() == pytest.approx(reference.item() * 16, rel=1e-6)


def test_kd_by_hand_two_classes():
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax -> (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(student, teacher, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # T = 2 halves both logits: teacher softmax (sqrt3/(sqrt3+1), ...), times T^2 = 4
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected_t2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert kd_loss(student, teacher, 2.0).item() == pytest.approx(expected_t2, rel=1e-5)


def test_l2_is_eq3_mean_squared_difference_of_softened_sigmoids_times_t_squared():
    student = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    teacher = torch.tensor([[4.0, 2.0], [-1.0, 3.0]])
    temperature = 2.0
    sig = lambda x: 1 / (1 + math.exp(-x / temperature))  # noqa: E731
    by_hand = [
        4 * ((sig(4) - sig(0)) ** 2 + 0) / 2,
        4 * ((sig(-1) - sig(1)) ** 2 + (sig(3) - sig(-1)) ** 2) / 2,
    ]
    values = l2_loss(student, teacher, temperature)
    assert values.tolist() == pytest.approx(by_hand, rel=1e-6)
    assert values.mean().item() == pytest.approx(
        4 * F.mse_loss(torch.sigmoid(student / 2), torch.sigmoid(teacher / 2)).item(), rel=1e-6
    )
    assert l2_loss(student, teacher, 1.0).mean().item() == pytest.approx(
        F.mse_loss(torch.sigmoid(student), torch.sigmoid(teacher)).item(), rel=1e-6
    )  # T = 1: Eq. 3 exactly


def test_l2_gradient_does_not_fade_with_temperature():
    """With T^2 the gradient tends to (s - t) / (8 C) for T large against the logits (functional.py's derivation)."""
    generator = torch.Generator().manual_seed(4)
    student = torch.rand(3, 5, generator=generator).mul(2).sub(1).requires_grad_(True)
    teacher = torch.rand(3, 5, generator=generator).mul(2).sub(1)
    limit = (student.detach() - teacher) / (8 * 5)
    for temperature in (10.0, 100.0):
        (grad,) = torch.autograd.grad(l2_loss(student, teacher, temperature).sum(), student)
        assert torch.allclose(grad, limit, rtol=0.03 if temperature == 10 else 3e-4, atol=1e-7)
    # and T -> infinity is logit matching: mean_c (s - t)^2 / 16
    far = l2_loss(student.detach(), teacher, 100.0)
    assert far.tolist() == pytest.approx(((student.detach() - teacher) ** 2 / 16).mean(1).tolist(), rel=1e-3)


def test_binary_kd_is_per_class_binary_kl_times_t_squared():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(3, 4, generator=generator)
    teacher = torch.randn(3, 4, generator=generator)
    temperature = 3.0
    p = torch.sigmoid(teacher / temperature).double()
    q = torch.sigmoid(student / temperature).double()
    kl = p * torch.log(p / q) + (1 - p) * torch.log((1 - p) / (1 - q))
    expected = kl.mean(dim=1) * temperature**2
    assert binary_kd_loss(student, teacher, temperature).double().tolist() == pytest.approx(
        expected.tolist(), rel=1e-4, abs=1e-6
    )
    # zero when the student equals the teacher; its gradient equals the soft-target BCE's
    assert binary_kd_loss(teacher, teacher, temperature).abs().max().item() < 1e-6
    student.requires_grad_(True)
    binary_kd_loss(student, teacher, temperature).sum().backward()
    ours = student.grad.clone()
    student.grad = None
    bce = F.binary_cross_entropy_with_logits(
        student / temperature, torch.sigmoid(teacher / temperature), reduction="none"
    )
    (bce.mean(dim=1) * temperature**2).sum().backward()
    assert torch.allclose(ours, student.grad, atol=1e-6)


def test_supervised_losses_match_torch_means():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(6, 5, generator=generator)
    labels = torch.tensor([0, 4, 2, 2, 1, 3])
    assert supervised_loss(logits, labels, False).mean().item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )
    multi_hot = (torch.rand(6, 5, generator=generator) > 0.5).float()
    reference = F.binary_cross_entropy_with_logits(logits, multi_hot)
    assert supervised_loss(logits, multi_hot, True).mean().item() == pytest.approx(reference.item(), rel=1e-6)


def test_objective_combines_terms_and_detaches_teacher():
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(4, 3, generator=generator, requires_grad=True)
    teacher = torch.randn(4, 3, generator=generator, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    objective = Objective(multilabel=False, distill="kd", temperature=10.0, lambda1=0.3, lambda2=0.7)
    terms = objective(student, labels, teacher)
    assert set(terms) == {"ce", "distill", "total"}
    assert torch.allclose(terms["total"], 0.3 * terms["ce"] + 0.7 * terms["distill"])
    weighted_sum(terms["total"], torch.full((4,), 0.25)).backward()
    assert teacher.grad is None and student.grad is not None
    assert set(Objective(multilabel=True)(student, (labels[:, None] == torch.arange(3)).float())) == {"ce", "total"}


def test_unknown_distill_loss_and_missing_teacher_are_refused():
    logits = torch.zeros(2, 3)
    with pytest.raises(UsageError, match=r"unknown distillation loss 'mse' \(registered: bce, kd, l2\)"):
        get_distill_loss("mse")
    with pytest.raises(UsageError, match="unknown distillation loss 'mse'"):
        Objective(multilabel=False, distill="mse")  # refused when built, before any batch
    with pytest.raises(ValueError, match="needs teacher"):
        Objective(multilabel=False, distill="kd")(logits, torch.tensor([0, 1]))


# -- the registry ----------------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so a loss registered by a test is gone after it."""
    monkeypatch.setattr(registry, "_DISTILL_LOSSES", dict(registry._DISTILL_LOSSES))


def test_registry_lists_the_three_glidn_losses_by_their_functions():
    assert list_distill_losses() == ["bce", "kd", "l2"]
    assert get_distill_loss("kd") is kd_loss
    assert get_distill_loss("l2") is l2_loss
    assert get_distill_loss("bce") is binary_kd_loss


def test_a_registered_loss_is_usable_by_objective_and_the_training_schema(scratch_registry):
    @register_distill_loss("l1")
    def l1_loss(student, teacher, temperature):
        return (torch.sigmoid(student / temperature) - torch.sigmoid(teacher / temperature)).abs().mean(dim=1)

    assert "l1" in list_distill_losses() and get_distill_loss("l1") is l1_loss
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[100.0, -100.0]])
    terms = Objective(multilabel=True, distill="l1", lambda1=0.0, lambda2=2.0)(student, torch.ones(1, 2), teacher)
    assert terms["distill"].tolist() == pytest.approx([0.5])  # |1 - 0.5| and |0 - 0.5|, mean over classes
    assert terms["total"].tolist() == pytest.approx([1.0])
    assert validate(DistillSettings, {"loss": "l1"}).loss == "l1"
    config = training_defaults(distill=True)
    config["distill"]["loss"] = "l1"
    validate(DistillStageSettings, config)  # train() accepts it too


def test_registering_a_taken_or_reserved_name_is_refused(scratch_registry):
    with pytest.raises(ValueError, match="already registered as 'kd'"):
        register_distill_loss("kd")(l2_loss)
    with pytest.raises(ValueError, match="cannot name"):
        register_distill_loss("auto")(l2_loss)
    assert get_distill_loss("kd") is kd_loss


def test_settings_refuse_an_unregistered_loss_in_one_line():
    assert validate(DistillSettings, {"loss": "auto"}).loss == "auto"
    with pytest.raises(UsageError) as refused:
        validate(DistillSettings, {"loss": "nope"})
    assert (
        str(refused.value) == "config key 'loss' = 'nope': must be auto or a registered distillation loss (bce, kd, l2)"
    )


def test_distill_cli_refuses_an_unknown_loss_before_writing(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["distill", tmp_path / "feats.h5", "--dml", "--view", "local", "--out", out, "--loss", "nope"], capsys
    )
    assert code == 2
    assert "'distill.loss' = 'nope': must be auto or a registered distillation loss (bce, kd, l2)" in err
    assert "Traceback" not in err and not out.exists()


def test_distill_help_lists_the_registered_losses(capsys):
    code, out, _ = run_cli(["distill", "--help"], capsys)
    assert code == 0
    assert "registered distillation loss: bce, kd, l2" in " ".join(out.replace("│", " ").split())
