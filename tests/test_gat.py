"""GATLayer: equal to PyG's GATConv, finite on empty rows, and the context-graph masks."""

import pytest
import torch

from hoitool.nn import GATLayer, frame_adjacency, global_adjacency, local_adjacency


def edge_index_of(adj: torch.Tensor) -> torch.Tensor:
    """(N, N) bool with adj[i, j] = 'i attends to j' -> PyG edge_index rows (source j, target i)."""
    target, source = adj.nonzero().T
    return torch.stack([source, target])


@pytest.mark.parametrize("heads", [1, 3])
@pytest.mark.parametrize("concat", [True, False])
@pytest.mark.parametrize("self_loops", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_matches_pyg_gatconv(heads, concat, self_loops, residual):
    pyg = pytest.importorskip("torch_geometric.nn")
    torch.manual_seed(heads * 10 + concat * 2 + self_loops + 4 * residual)
    conv = pyg.GATConv(6, 5, heads=heads, concat=concat, add_self_loops=self_loops, residual=residual)
    torch.nn.init.normal_(conv.bias)  # GATConv starts with zero bias; make the bias visible in the check
    layer = GATLayer(6, 5, heads=heads, concat=concat, residual=residual)
    layer.load_state_dict(conv.state_dict())  # parameter names mirror GATConv exactly

    nodes = 9
    adj = torch.rand(nodes, nodes) < 0.4
    adj.fill_diagonal_(False)
    adj[4, :] = False  # node 4 receives nothing (still has out-edges)
    edge_index = edge_index_of(adj)
    if self_loops:  # GATConv adds self loops itself; the dense layer takes them from the diagonal
        adj = adj | torch.eye(nodes, dtype=torch.bool)
    x = torch.randn(nodes, 6)

    expected = conv(x, edge_index)
    got = layer(x.unsqueeze(0), adj.unsqueeze(0)).squeeze(0)
    assert got.shape == expected.shape == (nodes, heads * 5 if concat else 5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_from_gatconv_copies_weights_and_settings():
    pyg = pytest.importorskip("torch_geometric.nn")
    conv = pyg.GATConv(4, 3, heads=2, concat=False, negative_slope=0.1, residual=True)
    layer = GATLayer.from_gatconv(conv)
    assert (layer.heads, layer.concat, layer.negative_slope, layer.output_dim) == (2, False, 0.1, 3)
    for name, value in conv.state_dict().items():
        assert torch.equal(layer.state_dict()[name], value)


def test_rows_without_neighbours_are_finite_with_finite_gradients():
    torch.manual_seed(0)
    layer = GATLayer(4, 3, heads=2, bias=True)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 5, 4, requires_grad=True)
    adj = torch.ones(2, 5, 5, dtype=torch.bool)
    adj[0, 1, :] = False  # one empty row
    adj[1] = False  # a whole graph without edges (an all-padding video)
    out = layer(x, adj)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0, 1], layer.bias)  # zeros before bias
    torch.testing.assert_close(out[1], layer.bias.expand(5, -1))
    out.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_attention_dropout_only_in_training():
    torch.manual_seed(0)
    layer = GATLayer(4, 4, dropout=0.5)
    x, adj = torch.randn(1, 6, 4), torch.ones(1, 6, 6, dtype=torch.bool)
    layer.eval()
    torch.testing.assert_close(layer(x, adj), layer(x, adj))
    layer.train()
    assert not torch.allclose(layer(x, adj), layer(x, adj))


def test_global_and_local_adjacency_on_a_hand_checked_mask():
    # One video, T=2 frames, K=2 slots; frame 0 has both boxes, frame 1 only its first. Nodes: 0,1 | 2,(3 padded).
    valid = torch.tensor([[[True, True], [True, False]]])
    expected_global = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    expected_local = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(global_adjacency(valid), expected_global.unsqueeze(0))
    assert torch.equal(local_adjacency(valid), expected_local.unsqueeze(0))
    expected_frames = torch.tensor([[[1, 1], [1, 1]], [[1, 0], [0, 0]]], dtype=torch.bool)
    assert torch.equal(frame_adjacency(valid), expected_frames)


def test_adjacency_shapes_for_a_batch():
    valid = torch.rand(3, 4, 5) < 0.7
    assert global_adjacency(valid).shape == (3, 20, 20)
    assert local_adjacency(valid).shape == (3, 20, 20)
    assert frame_adjacency(valid).shape == (12, 5, 5)
    # local is the global graph restricted to same-frame pairs
    assert torch.equal(local_adjacency(valid) & ~global_adjacency(valid), torch.zeros(3, 20, 20, dtype=torch.bool))


def test_local_view_equals_running_each_frame_separately():
    torch.manual_seed(1)
    layer = GATLayer(6, 4, heads=2, residual=True)
    batch, frames, boxes = 2, 3, 4
    valid = torch.rand(batch, frames, boxes) < 0.75
    x = torch.randn(batch, frames, boxes, 6)
    whole = layer(x.view(batch, frames * boxes, 6), local_adjacency(valid)).view(batch, frames, boxes, -1)
    for b in range(batch):
        for t in range(frames):
            alone = layer(x[b, t].unsqueeze(0), frame_adjacency(valid[b : b + 1, t : t + 1])).squeeze(0)
            torch.testing.assert_close(whole[b, t], alone, atol=1e-6, rtol=1e-5)


def test_global_view_is_permutation_equivariant():
    torch.manual_seed(2)
    layer = GATLayer(5, 3, heads=3)
    valid = torch.rand(1, 4, 3) < 0.8
    x = torch.randn(1, 12, 5)
    adj = global_adjacency(valid)
    perm = torch.randperm(12)
    out = layer(x, adj)
    out_perm = layer(x[:, perm], adj[:, perm][:, :, perm])
    torch.testing.assert_close(out_perm, out[:, perm], atol=1e-6, rtol=1e-5)
