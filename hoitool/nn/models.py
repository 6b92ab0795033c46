"""The context-graph classifiers of GLIDN (teacher, student, and the no-relation baseline).

nodes -> input projection -> [node encodings] -> GAT layers over the view's graph
-> pooling over the valid nodes -> linear classifier. The view decides the graph:
``global`` (every node of the video), ``local`` (nodes of the same frame), or
``baseline`` (no graph layers at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hoitool.errors import UsageError
from hoitool.nn.encodings import GeometryEncoding, TimeEncoding
from hoitool.nn.gat import GATLayer
from hoitool.nn.graphs import frame_adjacency, global_adjacency
from hoitool.nn.standardize import FeatureStandardization
from hoitool.settings.training import ModelSettings

VIEWS = ("global", "local", "baseline")
POOLINGS = ("max", "mean")

# The paper's recipe (Sec. 4.2): 512-d nodes, one GAT layer, one head, max pooling, appearance only.
MODEL_DEFAULTS: dict = ModelSettings().model_dump()  # described in hoitool.settings.training.ModelSettings


def masked_pool(h: torch.Tensor, valid: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, N, D) over the nodes where valid (B, N) -> (B, D); a video without valid nodes pools to zeros."""
    mask = valid.unsqueeze(-1)
    if pooling == "max":
        filled = h.masked_fill(~mask, torch.finfo(h.dtype).min)
        pooled = filled.amax(dim=1)
        return torch.where(valid.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))
    count = valid.sum(dim=1, keepdim=True).clamp(min=1).to(h.dtype)
    return (h * mask).sum(dim=1) / count


class ContextGraphNet(nn.Module):
    """Video classifier over a context graph of human/object nodes (one view of GLIDN)."""

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        view: str,
        hidden: int = 512,
        layers: int = 1,
        heads: int = 1,
        pooling: str = "max",
        dropout: float = 0.0,
        residual: bool = False,
        geometry_encoding: bool = False,
        time_encoding: bool = False,
        input_norm: bool = False,
    ):
        super().__init__()
        _check_hyper_parameters(view, hidden, layers, heads, pooling, dropout)
        self.view = view
        self.pooling = pooling
        self.dropout = dropout
        self.standardize = FeatureStandardization()  # data.standardize: statistics set by the run, none by default
        self.norm = nn.LayerNorm(in_dim) if input_norm else None
        self.input = nn.Linear(in_dim, hidden)
        self.geometry = GeometryEncoding(hidden) if geometry_encoding else None
        self.time = TimeEncoding(hidden) if time_encoding else None
        # Heads are concatenated, each hidden // heads wide, so every layer maps hidden -> hidden.
        graph_layers = 0 if view == "baseline" else layers
        self.graph = nn.ModuleList(
            GATLayer(hidden, hidden // heads, heads=heads, concat=True, dropout=dropout, residual=residual)
            for _ in range(graph_layers)
        )
        self.classifier = nn.Linear(hidden, num_classes)

    def embed(self, nodes, boxes=None, frame_size=None) -> torch.Tensor:
        """(B, T, K, D) node features -> (B, T, K, hidden) node embeddings, encodings included."""
        x = self.standardize(nodes.to(self.input.weight.dtype))  # padding too, but masked in relate and pooling
        if self.norm is not None:
            x = self.norm(x)
        h = F.relu(self.input(x))
        h = F.dropout(h, p=self.dropout, training=self.training)
        if self.geometry is not None:
            if boxes is None or frame_size is None:
                raise UsageError("model has geometry_encoding on but no boxes/frame size were given")
            h = h + self.geometry(boxes, frame_size).to(h.dtype)
        if self.time is not None:
            h = h + self.time(h.shape[1], h.device).to(h.dtype)
        return h

    def relate(self, h: torch.Tensor, valid: torch.Tensor, attention: list | None = None) -> torch.Tensor:
        """(B, T, K, hidden) -> (B, T, K, hidden) after the graph layers of this view.

        ``attention``: a list that receives each layer's weights as (B, heads, N, N) over the video's
        N = T * K nodes, frame-major (the local view's per-frame graphs placed on the block diagonal).
        """
        if not len(self.graph):
            return h
        batch, frames, boxes, dim = h.shape
        if self.view == "local":
            # Block-diagonal graph: run the T per-frame graphs as one batch (same result, 1/T the attention).
            x, adj = h.reshape(batch * frames, boxes, dim), frame_adjacency(valid)
        else:
            x, adj = h.reshape(batch, frames * boxes, dim), global_adjacency(valid)
        for layer in self.graph:
            if attention is None:
                x = layer(x, adj)
            else:
                x, weights = layer(x, adj, return_attention=True)
                attention.append(self._video_attention(weights, batch, frames, boxes))
            x = F.relu(x)
            x = F.dropout(x, p=self.dropout, training=self.training)
        return x.reshape(batch, frames, boxes, -1)

    def _video_attention(self, weights: torch.Tensor, batch: int, frames: int, boxes: int) -> torch.Tensor:
        """A layer's weights as (B, heads, N, N) over the whole video, whichever graph the view runs."""
        if self.view != "local":
            return weights
        heads, nodes = weights.shape[1], frames * boxes
        per_frame = weights.reshape(batch, frames, heads, boxes, boxes)
        full = weights.new_zeros(batch, heads, frames, boxes, frames, boxes)
        for frame in range(frames):
            full[:, :, frame, :, frame, :] = per_frame[:, frame]
        return full.reshape(batch, heads, nodes, nodes)

    @torch.no_grad()
    def attention(self, nodes, valid, boxes=None, frame_size=None) -> list[torch.Tensor]:
        """Each graph layer's attention, (B, heads, N, N) with N = T * K frame-major (empty for the baseline).

        ``[b, h, i, j]``: how much node ``i`` (frame ``i // K``, slot ``i % K``) takes from node ``j``;
        the same forward pass as :meth:`forward`, whose outputs it does not change.
        """
        weights: list[torch.Tensor] = []
        self.relate(self.embed(nodes, boxes, frame_size), valid.bool(), weights)
        return weights

    def forward(
        self,
        nodes: torch.Tensor,
        valid: torch.Tensor,
        boxes: torch.Tensor | None = None,
        frame_size: torch.Tensor | None = None,
        return_embeddings: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """nodes (B, T, K, D), valid (B, T, K) bool, boxes (B, T, K, 4) xyxy px, frame_size (B, 2) (H, W) -> (B, classes).

        ``return_embeddings``: also the node embeddings after the graph layers, ``(logits, (B, T*K, hidden),
        valid (B, T*K))`` frame-major, through this forward (so a DDP wrapper's hooks see the pass).
        """
        valid = valid.bool()
        h = self.relate(self.embed(nodes, boxes, frame_size), valid)
        flat, flat_valid = h.flatten(1, 2), valid.flatten(1)
        logits = self.classifier(masked_pool(flat, flat_valid, self.pooling))
        return (logits, flat, flat_valid) if return_embeddings else logits


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_hyper_parameters(view, hidden, layers, heads, pooling, dropout) -> None:
    if view not in VIEWS:
        raise UsageError(f"model.view must be one of {', '.join(VIEWS)}, got {view!r}")
    if pooling not in POOLINGS:
        raise UsageError(f"model.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if not _is_int(layers) or not 1 <= layers <= 3:
        raise UsageError(f"model.layers must be 1, 2 or 3, got {layers!r}")
    if not _is_int(heads) or heads < 1:
        raise UsageError(f"model.heads must be a positive integer, got {heads!r}")
    if not _is_int(hidden) or hidden < 1 or hidden % heads:
        raise UsageError(f"model.hidden must be a positive multiple of model.heads ({heads}), got {hidden!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise UsageError(f"model.dropout must be in [0, 1), got {dropout!r}")


def build_model(config: dict, in_dim: int, num_classes: int) -> ContextGraphNet:
    """A model from a ``model`` config section; missing keys take MODEL_DEFAULTS, unknown keys are refused."""
    unknown = sorted(set(config) - set(MODEL_DEFAULTS))
    if unknown:
        raise UsageError(f"unknown model config key(s): {', '.join(unknown)}")
    settings = {**MODEL_DEFAULTS, **config}
    return ContextGraphNet(in_dim, num_classes, **settings)
