"""ContextGraphNet: views, masked pooling, encodings, config, and that relations can be learned."""

import pytest
import torch

from hoitool.errors import UsageError
from hoitool.nn import MODEL_DEFAULTS, ContextGraphNet, build_model, local_adjacency
from hoitool.nn.models import masked_pool

IN_DIM, CLASSES = 12, 3


def tiny(view, **options):
    torch.manual_seed(0)
    settings = {"hidden": 16, **options}
    return ContextGraphNet(IN_DIM, CLASSES, view, **settings).eval()


def inputs(batch=2, frames=3, boxes=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    nodes = torch.randn(batch, frames, boxes, IN_DIM, generator=generator).half()  # the store holds float16
    valid = torch.rand(batch, frames, boxes, generator=generator) < 0.7
    valid[:, :, 0] = True
    xy = torch.rand(batch, frames, boxes, 2, generator=generator) * 100
    boxes_xyxy = torch.cat([xy, xy + 20], dim=-1)
    frame_size = torch.tensor([[240.0, 320.0]] * batch)
    return nodes, valid, boxes_xyxy, frame_size


@pytest.mark.parametrize("view", ["global", "local", "baseline"])
@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_logits_shape_and_finite(view, pooling):
    model = tiny(view, pooling=pooling, layers=2, heads=2, residual=True, dropout=0.1)
    nodes, valid, _, _ = inputs()
    logits = model(nodes, valid)
    assert logits.shape == (2, CLASSES) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("view", ["global", "local", "baseline"])
@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_invalid_nodes_never_contribute(view, pooling):
    model = tiny(view, pooling=pooling, layers=2)
    nodes, valid, _, _ = inputs()
    changed = nodes.clone()
    changed[~valid] = torch.randn(int((~valid).sum()), IN_DIM).half() * 100
    torch.testing.assert_close(model(nodes, valid), model(changed, valid))


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_video_without_valid_nodes_pools_to_zeros(pooling):
    model = tiny("global", pooling=pooling)
    nodes, valid, _, _ = inputs()
    valid[1] = False
    logits = model(nodes, valid)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[1], model.classifier.bias)
    h = torch.randn(2, 5, 4, requires_grad=True)
    pooled = masked_pool(h, torch.tensor([[True] * 5, [False] * 5]), pooling)
    pooled.sum().backward()
    assert torch.equal(pooled[1], torch.zeros(4)) and torch.isfinite(h.grad).all()


def test_local_model_equals_dense_local_mask():
    """The model runs the local view as per-frame graphs; that must equal the (B, N, N) local mask."""
    model = tiny("local", layers=2, heads=2)
    nodes, valid, _, _ = inputs()
    h = model.embed(nodes)
    x = h.flatten(1, 2)
    for layer in model.graph:
        x = torch.relu(layer(x, local_adjacency(valid)))
    torch.testing.assert_close(model.relate(h, valid), x.view_as(h), atol=1e-6, rtol=1e-5)


def test_global_model_is_invariant_to_node_order():
    model = tiny("global", layers=2, heads=2)
    nodes, valid, _, _ = inputs(batch=1)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(3))
    shuffled_nodes = nodes.flatten(1, 2)[:, perm].view_as(nodes)
    shuffled_valid = valid.flatten(1)[:, perm].view_as(valid)
    torch.testing.assert_close(model(nodes, valid), model(shuffled_nodes, shuffled_valid), atol=1e-5, rtol=1e-5)


def test_local_model_depends_on_frame_grouping():
    """Moving a node to another frame changes the local graph (and so the logits) but not the global one."""
    nodes, valid, _, _ = inputs(batch=1)
    valid[:] = True
    swapped = nodes.clone()
    swapped[0, 0, 1], swapped[0, 1, 1] = nodes[0, 1, 1], nodes[0, 0, 1]
    local, global_, baseline = tiny("local"), tiny("global"), tiny("baseline")
    assert not torch.allclose(local(nodes, valid), local(swapped, valid), atol=1e-4)
    torch.testing.assert_close(global_(nodes, valid), global_(swapped, valid), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(baseline(nodes, valid), baseline(swapped, valid))


def test_baseline_has_no_graph_layers():
    assert len(tiny("baseline", layers=3).graph) == 0
    assert len(tiny("global", layers=3).graph) == 3


def test_geometry_encoding_changes_outputs_only_when_enabled():
    nodes, valid, boxes, frame_size = inputs()
    moved = boxes.clone()
    moved[..., [0, 2]] += 50
    plain = tiny("global")
    torch.testing.assert_close(plain(nodes, valid, boxes, frame_size), plain(nodes, valid, moved, frame_size))
    with_geometry = tiny("global", geometry_encoding=True)
    assert not torch.allclose(
        with_geometry(nodes, valid, boxes, frame_size), with_geometry(nodes, valid, moved, frame_size)
    )
    with pytest.raises(UsageError, match="geometry_encoding"):
        with_geometry(nodes, valid)


def test_time_encoding_changes_outputs_only_when_enabled():
    """Reversing the frame order is invisible to the global view unless time is encoded."""
    nodes, valid, _, _ = inputs()
    reversed_nodes, reversed_valid = nodes.flip(1), valid.flip(1)
    plain = tiny("global")
    torch.testing.assert_close(plain(nodes, valid), plain(reversed_nodes, reversed_valid), atol=1e-5, rtol=1e-5)
    timed = tiny("global", time_encoding=True)
    assert not torch.allclose(timed(nodes, valid), timed(reversed_nodes, reversed_valid), atol=1e-4)


def pair_equality_videos(pairs, generator):
    """Label 1 iff each frame holds two equal symbols: frames (a,a),(b,b) vs (a,b),(b,a).

    Every symbol pair appears once in each class, and both classes hold the same
    multiset of node features, so anything that pools nodes without relating
    them (the baseline) sees identical inputs with opposite labels; only
    relations within a frame tell them apart.
    """
    codebook = torch.randn(6, IN_DIM, generator=generator)
    nodes, labels = [], []
    for _ in range(pairs):
        a, b = torch.randperm(6, generator=generator)[:2].tolist()
        for frames, label in (([[a, a], [b, b]], 1), ([[a, b], [b, a]], 0)):
            nodes.append(codebook[torch.tensor(frames)])
            labels.append(label)
    return torch.stack(nodes), torch.ones(2 * pairs, 2, 2, dtype=torch.bool), torch.tensor(labels)


def train_accuracy(view, nodes, valid, labels, steps=150):
    torch.manual_seed(0)
    model = ContextGraphNet(IN_DIM, 2, view, hidden=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(nodes, valid), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(nodes, valid).argmax(1) == labels).float().mean().item()
    return losses, accuracy


def test_local_view_learns_a_relation_the_baseline_cannot():
    nodes, valid, labels = pair_equality_videos(32, torch.Generator().manual_seed(0))
    losses, accuracy = train_accuracy("local", nodes, valid, labels)
    assert losses[-1] < 0.1 * losses[0]
    assert accuracy == 1.0
    base_losses, base_accuracy = train_accuracy("baseline", nodes, valid, labels)
    assert base_accuracy == 0.5
    assert base_losses[-1] > 0.69  # stuck at ln 2: each positive has a twin negative it cannot tell apart


def test_input_norm_makes_the_model_invariant_to_feature_scale():
    torch.manual_seed(0)
    model = ContextGraphNet(IN_DIM, CLASSES, "global", hidden=16, input_norm=True).eval()
    nodes, valid = torch.randn(2, 3, 4, IN_DIM), torch.ones(2, 3, 4, dtype=torch.bool)
    torch.testing.assert_close(model(nodes * 50 + 3, valid), model(nodes, valid), atol=1e-4, rtol=1e-4)
    plain = ContextGraphNet(IN_DIM, CLASSES, "global", hidden=16).eval()
    assert not torch.allclose(plain(nodes * 50 + 3, valid), plain(nodes, valid))


def test_build_model_from_config():
    assert MODEL_DEFAULTS == {
        "view": "global",
        "hidden": 512,
        "layers": 1,
        "heads": 1,
        "pooling": "max",
        "dropout": 0.0,
        "residual": False,
        "geometry_encoding": False,
        "time_encoding": False,
        "input_norm": False,
    }
    model = build_model({**MODEL_DEFAULTS, "view": "local", "hidden": 24, "heads": 3, "layers": 2}, IN_DIM, CLASSES)
    assert model.view == "local" and len(model.graph) == 2 and model.graph[0].heads == 3
    assert model.classifier.out_features == CLASSES and model.input.in_features == IN_DIM


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"view": "sideways"}, "model.view"),
        ({"layers": 4}, "model.layers"),
        ({"hidden": 10, "heads": 3}, "model.hidden"),
        ({"pooling": "sum"}, "model.pooling"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"hiden": 16}, "unknown model config key"),
    ],
)
def test_build_model_refuses_bad_config(bad, message):
    with pytest.raises(UsageError, match=message):
        build_model({**MODEL_DEFAULTS, **bad}, IN_DIM, CLASSES)
