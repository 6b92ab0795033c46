"""Graph attention, read and drawn: the weights equal a hand computation, the figure is a valid PNG."""

import numpy as np
import pytest
import torch

from hoitool.eval.attention import attention_figure, draw_box_weights, run_attention
from hoitool.nn.gat import GATLayer
from hoitool.nn.models import build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def hand_attention(layer: GATLayer, x: np.ndarray, adj: np.ndarray) -> np.ndarray:
    """GAT's Eq. by hand, one head: e_ij = LeakyReLU(a_dst . W x_i + a_src . W x_j), softmax over i's neighbours."""
    w = layer.lin.weight.detach().numpy()
    a_src, a_dst = (p.detach().numpy().reshape(-1) for p in (layer.att_src, layer.att_dst))
    h = x @ w.T
    alpha = np.zeros((len(x), len(x)))
    for i in range(len(x)):
        neighbours = np.flatnonzero(adj[i])
        if not neighbours.size:  # a padded node attends to nothing
            continue
        scores = np.array([a_dst @ h[i] + a_src @ h[j] for j in neighbours])
        scores = np.where(scores > 0, scores, layer.negative_slope * scores)
        alpha[i, neighbours] = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    return alpha


def test_gat_layer_returns_the_attention_it_uses_and_the_same_outputs():
    torch.manual_seed(0)
    layer = GATLayer(3, 4, heads=1)
    x = torch.randn(1, 3, 3)
    adj = torch.tensor([[[1, 1, 0], [1, 1, 1], [0, 1, 1]]], dtype=torch.bool)
    out, weights = layer(x, adj, return_attention=True)
    assert torch.equal(out, layer(x, adj))
    assert np.allclose(weights[0, 0].detach().numpy(), hand_attention(layer, x[0].numpy(), adj[0].numpy()), atol=1e-6)


@pytest.mark.parametrize("view", ["local", "global"])
def test_model_attention_is_the_views_graph_by_hand(view):
    """2 frames x 2 boxes, one padded: local weights sit on the per-frame blocks, global ones span the video."""
    torch.manual_seed(1)
    model = build_model({"view": view, "hidden": 4}, 5, 3).eval()
    nodes = torch.randn(1, 2, 2, 5)
    valid = torch.tensor([[[True, True], [True, False]]])
    (weights,) = model.attention(nodes, valid)
    h = model.embed(nodes).reshape(4, 4).detach().numpy()
    flat = valid.reshape(4).numpy()
    same_frame = np.kron(np.eye(2), np.ones((2, 2))).astype(bool)
    adj = flat[:, None] & flat[None, :] & (same_frame if view == "local" else True)
    assert weights.shape == (1, 1, 4, 4)
    assert np.allclose(weights[0, 0].numpy(), hand_attention(model.graph[0], h, adj), atol=1e-6)
    assert torch.equal(model(nodes, valid), model(nodes, valid))  # reading attention changed nothing
    assert model.attention(nodes, valid)[0].sum(-1)[0, 0].tolist() == pytest.approx([1, 1, 1, 0])


def test_draw_box_weights_writes_a_png(tmp_path):
    frames = np.full((3, 32, 40, 3), 200, np.uint8)
    boxes = np.tile(np.array([[2, 2, 12, 20], [18, 6, 30, 16]], np.float32), (3, 1, 1))
    valid = np.array([[True, True], [True, False], [True, True]])
    weights = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    out = draw_box_weights(frames, boxes, valid, weights, tmp_path / "fig.png", focus=[(0, 0)], title="t")
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    with pytest.raises(ValueError, match="do not agree"):
        draw_box_weights(frames, boxes, valid, weights[:2], tmp_path / "bad.png")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A rendered synthetic set (6 videos), its boxes and crop features, a global and a local run (1 epoch)."""
    from helpers import rendered_crop_features

    from hoitool.train.loop import TrainRequest, train
    from hoitool.train.presets import resolve_training_config

    root = rendered_crop_features(tmp_path_factory.mktemp("attention"))
    runs = {}
    for view in ("global", "local"):
        options = {"model.view": view, "model.hidden": 8, "train.epochs": 1, "runtime.device": "cpu"}
        config = resolve_training_config(False, None, None, dict(options, **{"data.workers": 0}))
        runs[view] = train(TrainRequest("teacher", root / "features.h5", root / view, config)).run_dir
    return root, runs


@pytest.mark.slow
def test_the_figure_draws_the_runs_attention_for_that_video(tiny_runs, tmp_path):
    from hoitool.store import open_store
    from hoitool.train.checkpoint import load_checkpoint

    root, runs = tiny_runs
    store = open_store(root / "features.h5")
    video = store.video_ids[0]
    arrays = store.read(video)
    for view, run in runs.items():
        drawn = attention_figure(run, video, tmp_path / f"{view}.png")
        assert (tmp_path / f"{view}.png").read_bytes().startswith(PNG_MAGIC)
        state = load_checkpoint(run / "checkpoints" / "best.pt")
        model = build_model(state["model_config"], state["in_dim"], state["num_classes"])
        model.load_state_dict(state["model"])
        nodes = torch.from_numpy(arrays["nodes"][:1].astype(np.float32))
        valid = arrays["valid"][0]
        h = model.eval().embed(nodes).reshape(-1, 8).detach().numpy()
        frames, slots = valid.shape
        flat = valid.reshape(-1)
        same_frame = np.kron(np.eye(frames), np.ones((slots, slots))).astype(bool)
        adj = flat[:, None] & flat[None, :] & (same_frame if view == "local" else True)
        expected = hand_attention(model.graph[0], h, adj)
        # the dataset's boxes put the person in slot 0: local, each frame's person; global, frame 0's person
        if view == "local":
            rows = [expected[t * slots, t * slots : (t + 1) * slots] for t in range(frames)]
            assert drawn.focus == [(t, 0) for t in range(frames)]
            assert np.allclose(drawn.weights, np.stack(rows), atol=1e-5)
        else:
            assert drawn.focus == [(0, 0)]
            assert np.allclose(drawn.weights, expected[0].reshape(frames, slots), atol=1e-5)


@pytest.mark.slow
def test_an_unknown_video_or_a_frame_without_a_human_is_one_line(tiny_runs):
    from hoitool.errors import UsageError

    root, runs = tiny_runs
    with pytest.raises(UsageError, match="not in"):
        run_attention(runs["global"], "nope")
    with pytest.raises(UsageError, match="--frame 99"):
        run_attention(runs["global"], open_first(root), frame=99)


def open_first(root):
    from hoitool.store import open_store

    return open_store(root / "features.h5").video_ids[0]
