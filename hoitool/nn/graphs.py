"""Context-graph adjacency masks built from the features store's validity mask.

Nodes are the boxes of a video flattened frame-major: node ``n = t * K + k``
for frame ``t`` and box slot ``k``, so ``N = T * K``. An adjacency entry
``adj[b, i, j]`` says node ``i`` attends to node ``j``; padded (invalid) nodes
have no edges at all, so they neither send nor receive messages.
"""

from __future__ import annotations

import torch


def _check_valid(valid: torch.Tensor) -> torch.Tensor:
    if valid.dim() != 3:
        raise ValueError(f"valid must be (B, T, K), got shape {tuple(valid.shape)}")
    return valid.bool()


def global_adjacency(valid: torch.Tensor) -> torch.Tensor:
    """(B, T, K) -> (B, N, N): every valid node attends to every valid node of its video (itself included)."""
    flat = _check_valid(valid).flatten(1)
    return flat.unsqueeze(2) & flat.unsqueeze(1)


def local_adjacency(valid: torch.Tensor) -> torch.Tensor:
    """(B, T, K) -> (B, N, N): valid nodes attend only to valid nodes of the same frame (itself included)."""
    valid = _check_valid(valid)
    batch, frames, boxes = valid.shape
    # (B, T, K, 1, 1) & (B, 1, 1, T, K) & same-frame (T, 1, T, 1) -> (B, T, K, T, K)
    same_frame = torch.eye(frames, dtype=torch.bool, device=valid.device).view(1, frames, 1, frames, 1)
    adj = valid.view(batch, frames, boxes, 1, 1) & valid.view(batch, 1, 1, frames, boxes) & same_frame
    return adj.view(batch, frames * boxes, frames * boxes)


def frame_adjacency(valid: torch.Tensor) -> torch.Tensor:
    """(B, T, K) -> (B * T, K, K): the local graphs as one batch of per-frame graphs.

    The local view's adjacency is block diagonal; running the graph layers on
    these (B*T) small graphs gives the same result as the (B, N, N) mask from
    :func:`local_adjacency` at 1/T of the attention cost.
    """
    valid = _check_valid(valid)
    per_frame = valid.reshape(-1, valid.shape[-1])
    return per_frame.unsqueeze(2) & per_frame.unsqueeze(1)
