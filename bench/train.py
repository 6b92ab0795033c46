"""Training-path benchmarks for hoitool; prints figures, asserts nothing.

Sections (each a function taking the parsed args, selected with --only):
  gat_benchmark  one GAT layer on fully connected video graphs: the dense masked
                 GATLayer vs PyTorch Geometric's GATConv vs a torch-scatter edge
                 list, forward and forward+backward, outputs checked equal; then the
                 local view: per-frame (B*T, K, K) graphs vs one (B, N, N) mask vs
                 the same edge lists. The full size needs ~16 GB of RAM (the edge
                 lists of the global view materialise 1.8M x 512 messages).
  store          training throughput reading the features store (lazy, DataLoader
                 workers) vs the same model on in-RAM tensors (bench/train_throughput.py).

Run:  python bench/train.py [--device cpu|cuda] [--small] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from train_throughput import store_vs_ram_benchmark

from hoitool.nn import GATLayer, frame_adjacency, global_adjacency, local_adjacency

# --------------------------------------------------------------------------- timing helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``step`` over ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_step(module_call: Callable[[], torch.Tensor]) -> Callable[[], object]:
    def step():
        with torch.no_grad():
            return module_call()

    return step


def forward_backward_step(module_call: Callable[[], torch.Tensor], module: torch.nn.Module) -> Callable[[], object]:
    def step():
        module.zero_grad(set_to_none=True)
        module_call().square().mean().backward()

    return step


# --------------------------------------------------------------------------- GAT benchmark


def edge_list_of(adj: torch.Tensor) -> torch.Tensor:
    """(B, N, N) bool -> (2, E) edges (source j, target i) over the B graphs as one disjoint graph of B*N nodes."""
    batch, target, source = adj.nonzero(as_tuple=True)
    offset = batch * adj.shape[1]
    return torch.stack([source + offset, target + offset])


def scatter_gat(layer: GATLayer, x: torch.Tensor, edge_index: torch.Tensor, scatter) -> torch.Tensor:
    """GAT over an edge list with torch-scatter, using ``layer``'s weights (the sparse alternative under test)."""
    heads, out_dim = layer.heads, layer.out_dim
    h = layer.lin(x).view(-1, heads, out_dim)
    score_src = (h * layer.att_src).sum(-1)
    score_dst = (h * layer.att_dst).sum(-1)
    source, target = edge_index
    scores = F.leaky_relu(score_src[source] + score_dst[target], layer.negative_slope)
    alpha = scatter.composite.scatter_softmax(scores, target, dim=0, dim_size=x.shape[0])
    out = scatter.scatter_add(h[source] * alpha.unsqueeze(-1), target, dim=0, dim_size=x.shape[0])
    out = out.reshape(x.shape[0], -1) if layer.concat else out.mean(dim=1)
    return out + layer.bias if layer.bias is not None else out


Candidate = tuple[str, torch.nn.Module, Callable[[], torch.Tensor]]


def sparse_candidates(dense: GATLayer, x: torch.Tensor, adj: torch.Tensor, device: torch.device) -> list[Candidate]:
    """PyG GATConv and the torch-scatter edge list on the same graph and weights, where installed."""
    flat_x, edge_index = x.reshape(-1, x.shape[-1]), edge_list_of(adj)
    candidates: list[Candidate] = []
    try:
        from torch_geometric.nn import GATConv

        conv = GATConv(dense.in_dim, dense.out_dim, add_self_loops=False).to(device)
        conv.load_state_dict(dense.state_dict())
        candidates.append(("PyG GATConv", conv, lambda: conv(flat_x, edge_index)))
    except ImportError:
        print("  PyG GATConv: torch_geometric not installed, column skipped")
    try:
        import torch_scatter

        candidates.append(("torch-scatter edges", dense, lambda: scatter_gat(dense, flat_x, edge_index, torch_scatter)))
    except ImportError:
        print("  torch-scatter edge list: torch_scatter not installed (still compiling?), column skipped")
    return candidates


def compare(candidates: list[Candidate], device: torch.device, repeats: int) -> None:
    """Time each candidate; check its output against the first one's; print speed-ups of the first."""

    def flat_output(call):
        output = forward_step(call)()
        return output.reshape(-1, output.shape[-1])

    reference = flat_output(candidates[0][2])
    results = {}
    for name, module, call in candidates:
        difference = (flat_output(call) - reference).abs().max().item()
        results[name] = (
            median_seconds(forward_step(call), device, repeats),
            median_seconds(forward_backward_step(call, module), device, repeats),
        )
        print(
            f"  {name:<22} forward {results[name][0] * 1e3:9.1f} ms   forward+backward "
            f"{results[name][1] * 1e3:9.1f} ms   max|diff| vs {candidates[0][0]} {difference:.2e}"
        )
    (first, (first_fwd, first_both)), *others = results.items()
    for name, (fwd, both) in others:
        print(
            f"  {first} speed-up over {name}: forward {fwd / first_fwd:.1f}x, forward+backward {both / first_both:.1f}x"
        )


def gat_benchmark(args) -> None:
    """One GAT layer (1 head, D -> D) on the global and the local graphs (all boxes valid unless --valid-fraction)."""
    device = torch.device(args.device)
    batch, frames, boxes, dim = (2, 8, 15, 128) if args.small else (8, 32, 15, 512)
    nodes = frames * boxes
    torch.manual_seed(0)
    x = torch.randn(batch, nodes, dim, device=device)
    valid = torch.rand(batch, frames, boxes, device=device) < args.valid_fraction
    dense = GATLayer(dim, dim).to(device)
    print(
        f"{batch} videos x {frames} frames x {boxes} boxes = {nodes} nodes/video, {dim} dims; "
        f"{int(valid.sum()):,} valid; device={device}, threads={torch.get_num_threads()}, median of {args.repeats} repeats"
    )

    adj = global_adjacency(valid)
    print(f"GAT layer, global view ({int(adj.sum()):,} edges):")
    compare(
        [("dense GATLayer", dense, lambda: dense(x, adj))] + sparse_candidates(dense, x, adj, device),
        device,
        args.repeats,
    )

    local_adj, per_frame_adj = local_adjacency(valid), frame_adjacency(valid)
    per_frame_x = x.reshape(batch * frames, boxes, dim)
    print(
        f"GAT layer, local view ({int(local_adj.sum()):,} edges): per-frame (B*T, K, K) graphs (the model's path) "
        "vs one (B, N, N) block-diagonal mask vs edge lists:"
    )
    compare(
        [
            ("per-frame graphs", dense, lambda: dense(per_frame_x, per_frame_adj).reshape(batch, nodes, -1)),
            ("(B, N, N) mask", dense, lambda: dense(x, local_adj)),
        ]
        + sparse_candidates(dense, x, local_adj, device),
        device,
        args.repeats,
    )


# --------------------------------------------------------------------------- entry point

SECTIONS = {"gat": gat_benchmark, "store": store_vs_ram_benchmark}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--small", action="store_true", help="small sizes for a quick run")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median reported)")
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=1.0,
        help="fraction of box slots that hold a box (the rest is padding); 1.0 = fully connected",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="run only these sections")
    parser.add_argument("--workers", type=int, default=2, help="store section: DataLoader workers reading the store")
    parser.add_argument("--epochs", type=int, default=1, help="store section: timed epochs per round")
    parser.add_argument("--rounds", type=int, default=5, help="store section: alternating store/RAM rounds (medians)")
    parser.add_argument(
        "--worker-niceness", type=int, default=None, help="store section: niceness of the store-reading workers"
    )
    parser.add_argument("--suffix", default=".h5", choices=[".h5", ".zarr"], help="store section: backend")
    parser.add_argument("--features", default=None, help="store section: an existing features store to read")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.only or SECTIONS:
        SECTIONS[name](args)


if __name__ == "__main__":
    main()
