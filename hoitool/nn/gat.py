"""Graph attention (GAT) as one dense, masked, batched attention.

Video context graphs are small (N = frames x boxes, a few hundred nodes) and
nearly fully connected, so a (B, heads, N, N) score tensor masked by the
adjacency is far faster than gathering and scattering an edge list (see
docs/models.md for the measurement). Parameter names and shapes mirror
PyTorch Geometric's ``GATConv`` so weights load across with
``load_state_dict`` and the two can be checked against each other.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GATLayer(nn.Module):
    """One multi-head graph attention layer over dense adjacency masks.

    ``adj[b, i, j] = True`` means node ``i`` attends to node ``j`` (an edge
    ``j -> i``); add the diagonal for self loops. A node with no neighbour
    (padding) aggregates nothing: its output is the bias (plus the residual
    projection), never NaN.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        residual: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.heads = heads
        self.concat = concat
        self.negative_slope = negative_slope
        self.dropout = dropout
        total_out = heads * out_dim if concat else out_dim
        self.lin = nn.Linear(in_dim, heads * out_dim, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_dim))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_dim))
        self.res = nn.Linear(in_dim, total_out, bias=False) if residual else None
        self.bias = nn.Parameter(torch.empty(total_out)) if bias else None
        self.reset_parameters()

    @property
    def output_dim(self) -> int:
        return self.heads * self.out_dim if self.concat else self.out_dim

    def reset_parameters(self) -> None:
        """Glorot weights and zero bias, as GATConv initialises them."""
        nn.init.xavier_uniform_(self.lin.weight)
        for att in (self.att_src, self.att_dst):
            nn.init.xavier_uniform_(att.view(self.heads, self.out_dim))
        if self.res is not None:
            nn.init.xavier_uniform_(self.res.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @classmethod
    def from_gatconv(cls, conv) -> GATLayer:
        """A layer with the same hyper-parameters and weights as a PyG ``GATConv``.

        Only the plain homogeneous form is supported (single ``in_channels``,
        no edge features); self loops are the caller's adjacency diagonal.
        """
        if not isinstance(conv.in_channels, int) or conv.lin_edge is not None:
            raise ValueError("from_gatconv supports GATConv with int in_channels and no edge_dim")
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            heads=conv.heads,
            concat=conv.concat,
            negative_slope=conv.negative_slope,
            dropout=conv.dropout,
            residual=conv.res is not None,
            bias=conv.bias is not None,
        )
        layer.load_state_dict(conv.state_dict())
        return layer

    def forward(self, x: torch.Tensor, adj: torch.Tensor, return_attention: bool = False):
        """x: (B, N, in_dim), adj: (B, N, N) bool -> (B, N, output_dim).

        ``return_attention``: also return the attention weights (B, heads, N, N), ``[b, h, i, j]`` the
        weight node ``i`` gives node ``j`` (rows sum to 1 over ``i``'s neighbours; before dropout).
        """
        batch, nodes, _ = x.shape
        h = self.lin(x).view(batch, nodes, self.heads, self.out_dim)
        score_src = (h * self.att_src).sum(-1).transpose(1, 2)  # (B, H, N): node as j
        score_dst = (h * self.att_dst).sum(-1).transpose(1, 2)  # (B, H, N): node as i
        scores = F.leaky_relu(score_dst.unsqueeze(-1) + score_src.unsqueeze(-2), self.negative_slope)
        blocked = ~adj.unsqueeze(1)
        # A finite fill (not -inf) keeps rows without any neighbour finite in
        # softmax and its gradient; zeroing after softmax then removes them.
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1).masked_fill(blocked, 0.0)
        alpha = F.dropout(weights, p=self.dropout, training=self.training)
        out = torch.matmul(alpha, h.transpose(1, 2)).transpose(1, 2)  # (B, N, H, out_dim)
        out = out.reshape(batch, nodes, -1) if self.concat else out.mean(dim=2)
        if self.res is not None:
            out = out + self.res(x)
        if self.bias is not None:
            out = out + self.bias
        return (out, weights) if return_attention else out

    def extra_repr(self) -> str:
        return (
            f"{self.in_dim}, {self.out_dim}, heads={self.heads}, concat={self.concat}, "
            f"dropout={self.dropout}, residual={self.res is not None}"
        )
