"""Dual attention (hoitool.nn.dual_attention): Eq. 1-11 against hand computations on tiny tensors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from descent import descend

from hoitool.errors import UsageError
from hoitool.nn.dual_attention import (
    IGNORE,
    DualAttentionNet,
    MeanHead,
    PriorAttention,
    TRNHead,
    dual_attention_loss,
    masked_softmax,
    nth_combination,
    object_slot_targets,
    object_top1,
    plot_attention_maps,
    trn_tuples,
)


def test_masked_softmax_sums_to_one_over_valid_and_zero_on_padding():
    scores = torch.tensor([[1.0, 2.0, 50.0], [0.0, 0.0, 0.0]])
    valid = torch.tensor([[True, True, False], [False, False, False]])
    weights = masked_softmax(scores, valid)
    e = np.e
    assert torch.allclose(weights[0], torch.tensor([1 / (1 + e), e / (1 + e), 0.0]))
    assert torch.equal(weights[1], torch.zeros(3))


def test_prior_attention_by_hand():
    attention = PriorAttention(feature_dim=2, prior_dim=1, attention_dim=2)
    with torch.no_grad():
        attention.features.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        attention.prior.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        attention.prior.bias.zero_()
        attention.score.weight.copy_(torch.tensor([[2.0, 1.0]]))
    regions = torch.tensor([[[[0.5, 0.0], [0.0, 0.5], [9.0, 9.0]]]])  # (B=1, T=1, N=3, F=2), the last is padding
    valid = torch.tensor([[[True, True, False]]])
    h = torch.tensor([[0.3]])
    z = [2 * np.tanh(0.5 + 0.3) + np.tanh(0.0 - 0.3), 2 * np.tanh(0.0 + 0.3) + np.tanh(0.5 - 0.3)]
    expected = np.exp(z) / np.exp(z).sum()
    got = attention(regions, valid, h)[0, 0]
    assert torch.allclose(got, torch.tensor([*expected, 0.0], dtype=torch.float32), atol=1e-6)
    # the prior steers the attention: another prior, other weights
    assert not torch.allclose(attention(regions, valid, torch.tensor([[-2.0]]))[0, 0], got)


def test_trn_tuples_all_or_evenly_spaced():
    assert trn_tuples(3, 2, 3) == [(0, 1), (0, 2), (1, 2)]
    assert trn_tuples(4, 2, 3) == [(0, 1), (0, 3), (2, 3)]  # indices 0, 2, 5 of the 6 pairs
    assert trn_tuples(4, 4, 3) == [(0, 1, 2, 3)]
    every = list(itertools.combinations(range(7), 3))
    assert [nth_combination(7, 3, rank) for rank in range(len(every))] == every
    assert trn_tuples(7, 3, 4) == [every[0], every[11], every[22], every[34]]
    # 32 sampled frames: C(32, 16) = 601 080 390 tuples are never listed
    picked = trn_tuples(32, 16, 3)
    assert picked[0] == tuple(range(16)) and picked[-1] == tuple(range(16, 32)) and len(set(picked)) == 3


def test_trn_head_three_frames_by_hand():
    torch.manual_seed(0)
    head = TRNHead(in_dim=2, num_outputs=3, num_frames=3, hidden=4, max_tuples=3).double()
    f = torch.randn(1, 3, 2, dtype=torch.float64)
    g2, g3, h2, h3 = head.g[0], head.g[1], head.h[0], head.h[1]
    pair = lambda i, j: g2(torch.cat([f[:, i], f[:, j]], dim=-1))  # noqa: E731
    r2 = h2(pair(0, 1) + pair(0, 2) + pair(1, 2))
    r3 = h3(g3(torch.cat([f[:, 0], f[:, 1], f[:, 2]], dim=-1)))
    assert torch.allclose(head(f, torch.ones(1, 3, dtype=torch.bool)), r2 + r3)
    # frame 3 is padding: only the pair (1, 2) remains, the 3-frame relation drops out
    assert torch.allclose(head(f, torch.tensor([[True, True, False]])), h2(pair(0, 1)))
    with pytest.raises(ValueError):
        head(torch.randn(1, 4, 2, dtype=torch.float64), torch.ones(1, 4, dtype=torch.bool))


def test_mean_head_is_the_mean_over_valid_frames():
    head = MeanHead(2, 3, hidden=4)
    f = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    got = head(f, torch.tensor([[True, True, False]]))
    assert torch.allclose(got, head.mlp(torch.tensor([[2.0, 3.0]])))


def _model(temporal="trn", **kw):
    torch.manual_seed(0)
    return DualAttentionNet(
        in_dim=6,
        num_actions=4,
        num_objects=3,
        hidden=8,
        prior_hidden=5,
        attention_dim=7,
        temporal=temporal,
        num_frames=3,
        head_hidden=6,
        dropout=0.0,
        **kw,
    ).eval()


@pytest.mark.parametrize("temporal", ["trn", "mean"])
def test_model_shapes_and_attention_over_valid_regions(temporal):
    model = _model(temporal)
    regions = torch.randn(2, 3, 5, 6).half()
    valid = torch.rand(2, 3, 5) > 0.4
    valid[1, 2] = False  # a frame without boxes
    out = model(regions, valid)
    assert out.action.shape == (2, 4) and out.action_first.shape == (2, 4)
    assert out.object.shape == (2, 2, 4) and out.object_first.shape == (2, 2, 4)
    for weights in (out.alpha, out.beta):
        assert weights.shape == (2, 3, 5)
        assert torch.equal(weights[~valid], torch.zeros_like(weights[~valid]))
        sums = weights.sum(dim=-1)
        has_regions = valid.any(dim=-1)
        assert torch.allclose(sums[has_regions], torch.ones_like(sums[has_regions]))
        assert torch.equal(sums[~has_regions], torch.zeros_like(sums[~has_regions]))


def test_padding_regions_never_change_the_outputs():
    model = _model()
    regions = torch.randn(1, 3, 4, 6)
    valid = torch.tensor([[[True, True, False, False], [True, False, False, False], [True, True, True, False]]])
    noisy = regions.clone()
    noisy[~valid] = 1e3
    a, b = model(regions, valid), model(noisy, valid)
    for name in ("action", "object", "action_first", "object_first", "alpha", "beta"):
        assert torch.allclose(getattr(a, name), getattr(b, name), atol=1e-5), name


def test_feature_map_cells_work_like_regions():
    model = _model("mean")
    cells = torch.randn(2, 3, 2 * 2, 6)  # (B, T, h*w, D): every cell valid
    out = model(cells, torch.ones(2, 3, 4, dtype=torch.bool))
    assert torch.allclose(out.alpha.sum(-1), torch.ones(2, 3))


def test_object_slot_targets():
    classes = ["cup", "pen", "box"]
    assert object_slot_targets(["pen"], classes) == [1, 3]  # 3 = the null label
    assert object_slot_targets(["box", "cup", "pen"], classes) == [2, 0]  # two slots kept
    assert object_slot_targets([], classes) == [IGNORE, IGNORE]
    assert object_slot_targets(["cup"], classes, slots=1) == [0]
    with pytest.raises(UsageError, match="v1.*'spoon'"):
        object_slot_targets(["spoon"], classes, video="v1")


def test_loss_terms_by_hand():
    model = _model()
    out = model(torch.randn(2, 3, 4, 6), torch.ones(2, 3, 4, dtype=torch.bool))
    actions = torch.tensor([1, 3])
    objects = torch.tensor([[0, 3], [2, IGNORE]])
    terms = dual_attention_loss(out, actions, objects, first_weight=0.5, object_weight=2.0)
    assert torch.allclose(terms["action"], F.cross_entropy(out.action, actions, reduction="none"))
    hand = torch.stack(
        [
            F.cross_entropy(out.object[0], objects[0], reduction="sum"),
            F.cross_entropy(out.object[1, :1], objects[1, :1], reduction="sum"),
        ]
    )
    assert torch.allclose(terms["object"], hand)
    expected = terms["action"] + 0.5 * terms["action_first"] + 2.0 * (terms["object"] + 0.5 * terms["object_first"])
    assert torch.allclose(terms["total"], expected)


def test_end_to_end_gradients_reach_the_first_stage_and_the_priors():
    model = _model()
    model.train()
    out = model(torch.randn(2, 3, 4, 6), torch.ones(2, 3, 4, dtype=torch.bool))
    dual_attention_loss(out, torch.tensor([0, 1]), torch.tensor([[0, 3], [1, 2]]))["total"].sum().backward()
    for name in (
        "action_first",
        "object_first",
        "action_prior",
        "object_prior",
        "action_attention",
        "object_attention",
    ):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
    assert any(g.abs().sum() > 0 for g in (p.grad for p in model.action_prior.parameters()))


def test_object_top1_skips_null_and_unlabelled_slots():
    logits = np.zeros((2, 2, 4))
    logits[0, 0, 1] = logits[0, 1, 3] = logits[1, 0, 2] = 1.0
    targets = np.array([[1, 3], [0, IGNORE]])
    assert object_top1(logits, targets) == pytest.approx(0.5)  # slot (0,0) right, (1,0) wrong, the rest skipped
    assert np.isnan(object_top1(logits, np.full((2, 2), 3)))


def test_attention_maps_png_for_boxes_and_grids(tmp_path):
    rng = np.random.default_rng(0)
    alpha, beta = rng.dirichlet(np.ones(3), size=2), rng.dirichlet(np.ones(3), size=2)
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 30], [30, 10, 40, 40]]] * 2, dtype=np.float32)
    plot_attention_maps(
        tmp_path / "boxes.png",
        alpha,
        beta,
        (48, 64),
        boxes=boxes,
        frames=[np.zeros((48, 64, 3), dtype=np.uint8)] * 2,
        frame_indices=np.array([0, 8]),
        title="v1",
    )
    alpha, beta = rng.dirichlet(np.ones(6), size=2), rng.dirichlet(np.ones(6), size=2)
    plot_attention_maps(tmp_path / "grid.png", alpha, beta, (48, 64), grid=(2, 3))
    for name in ("boxes.png", "grid.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="cells"):
        plot_attention_maps(tmp_path / "bad.png", alpha, beta, (48, 64), grid=(2, 2))
    assert not (tmp_path / "bad.png").exists()


def test_bad_settings_are_usage_errors():
    with pytest.raises(UsageError):
        DualAttentionNet(4, 2, 2, temporal="lstm")
    with pytest.raises(UsageError, match="num_frames"):
        DualAttentionNet(4, 2, 2, temporal="trn")
    with pytest.raises(UsageError):
        DualAttentionNet(4, 2, 2, temporal="mean", object_slots=3)


def test_toy_attention_learns_to_localise_from_video_labels_only():
    """One region per frame carries both labels, the others are noise: the maps must find it (weak localisation)."""
    g = torch.Generator().manual_seed(0)
    b, t, n, d = 64, 3, 4, 6
    objects, actions = torch.randint(0, 3, (b,), generator=g), torch.randint(0, 3, (b,), generator=g)
    regions = torch.randn(b, t, n, d, generator=g)
    where = torch.randint(0, n, (b, t), generator=g)
    signal = torch.zeros(b, d)
    signal[torch.arange(b), objects] = 2.0
    signal[torch.arange(b), 3 + actions] = 2.0
    rows, frames = torch.arange(b)[:, None], torch.arange(t)[None, :]
    regions[rows, frames, where] = signal[:, None, :] + 0.1 * torch.randn(b, t, d, generator=g)
    valid = torch.ones(b, t, n, dtype=torch.bool)
    torch.manual_seed(0)
    model = DualAttentionNet(
        d,
        3,
        3,
        object_slots=1,
        hidden=16,
        prior_hidden=8,
        attention_dim=8,
        temporal="mean",
        head_hidden=16,
        dropout=0.0,
    )
    descend(
        model.parameters(),
        lambda: dual_attention_loss(model(regions, valid), actions, objects[:, None])["total"].mean(),
        150,
        0.1,
    )
    with torch.no_grad():
        out = model.eval()(regions, valid)
    assert (out.action.argmax(1) == actions).float().mean() > 0.9
    assert object_top1(out.object.numpy(), objects[:, None].numpy()) > 0.9
    for weights in (out.alpha, out.beta):  # uniform attention would put 0.25 there
        assert weights[rows, frames, where].mean() > 0.45
