"""Optional node encodings beyond the paper: where a box is, and when its frame is.

The paper's nodes carry appearance only (RoI features). These encodings add
box geometry and frame time to the node embedding; both are off by default so
the default model is the paper's recipe.
"""

from __future__ import annotations

import math

import torch
from torch import nn

GEOMETRY_FEATURES = 7  # x1, y1, x2, y2, w, h, area, all relative to the frame


def box_geometry(boxes: torch.Tensor, frame_size: torch.Tensor) -> torch.Tensor:
    """(B, T, K, 4) xyxy pixels and (B, 2) (H, W) -> (B, T, K, 7) normalised geometry in [0, 1]."""
    boxes = boxes.float()
    size = frame_size.to(device=boxes.device, dtype=boxes.dtype).clamp(min=1.0)
    height = size[:, 0].view(-1, 1, 1)
    width = size[:, 1].view(-1, 1, 1)
    x1 = boxes[..., 0] / width
    y1 = boxes[..., 1] / height
    x2 = boxes[..., 2] / width
    y2 = boxes[..., 3] / height
    w = (x2 - x1).clamp(min=0.0)
    h = (y2 - y1).clamp(min=0.0)
    return torch.stack([x1, y1, x2, y2, w, h, w * h], dim=-1)


class GeometryEncoding(nn.Module):
    """Small MLP from normalised box geometry to an embedding added to each node."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(GEOMETRY_FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, boxes: torch.Tensor, frame_size: torch.Tensor) -> torch.Tensor:
        """-> (B, T, K, dim)."""
        return self.mlp(box_geometry(boxes, frame_size))


def sinusoid(position: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Relative positions in [0, 1) -> (..., 2 * frequencies) sin/cos features.

    Angular frequencies run geometrically from pi (one half period over the
    whole video, so early and late frames never alias) to 64*pi (resolves
    about 1/128 of the video, enough for the 30-64 sampled frames in use).
    """
    omega = math.pi * torch.logspace(0, 6, frequencies, base=2.0, device=position.device)
    angle = position.unsqueeze(-1) * omega
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


class TimeEncoding(nn.Module):
    """Sinusoid of the frame's relative time t/T, projected and added to each node of that frame."""

    def __init__(self, dim: int, frequencies: int = 16):
        super().__init__()
        self.frequencies = frequencies
        self.proj = nn.Linear(2 * frequencies, dim)

    def forward(self, frames: int, device: torch.device) -> torch.Tensor:
        """-> (1, T, 1, dim), broadcastable over videos and boxes."""
        position = torch.arange(frames, device=device, dtype=torch.float32) / frames
        return self.proj(sinusoid(position, self.frequencies)).view(1, frames, 1, -1)
