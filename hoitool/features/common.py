"""What the backbone modules share: a layer's shape facts and the temporal mapping of 3D maps to frames.

A 3D backbone turns T sampled frames into t' temporal slices. Slice j is
computed from a window of input frames centred on ``temporal_offset + j *
temporal_stride`` (its receptive field's centre: every temporal convolution
is odd-sized and symmetrically padded, so only strided layers move it — a
stride-2 pool of size 2 puts it between two frames, +0.5). Each sampled frame
takes the slice whose centre is nearest, so its node features come from the
part of the map that is about that frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerSpec:
    dim: int  # channels (SlowFast: both pathways together)
    stride: int  # spatial stride w.r.t. the input image
    temporal_stride: int  # input frames per temporal slice; 1 for 2D backbones (SlowFast: its slow pathway's)
    min_frames: int = 1  # shortest clip a 3D backbone accepts up to this layer
    temporal_offset: float = 0.0  # centre of temporal slice 0, in input frames
    frame_multiple: int = 1  # clip lengths must be a multiple of this (SlowFast: alpha)


def slice_centres(steps: int, stride: float, offset: float = 0.0, frames: torch.Tensor | None = None) -> torch.Tensor:
    """Centre of each of ``steps`` slices in clip frames: ``offset + j * stride`` in the pathway's input.

    ``frames`` (the clip frame index of each of the pathway's input frames,
    e.g. SlowFast's slow pathway) maps input positions to clip frames by
    linear interpolation; None means the pathway sees every frame.
    """
    position = offset + stride * torch.arange(steps, dtype=torch.float64)
    if frames is None:
        return position
    frames = frames.to(torch.float64)
    low = position.floor().long().clamp(0, len(frames) - 1)
    high = (low + 1).clamp(max=len(frames) - 1)
    return frames[low] + (position - low) * (frames[high] - frames[low])


def nearest_slice(centres: torch.Tensor, count: int) -> torch.Tensor:
    """For each of ``count`` frames, the index of the slice with the nearest centre (ties: the earlier slice)."""
    distance = (torch.arange(count, dtype=torch.float64)[:, None] - centres.to(torch.float64)[None, :]).abs()
    return distance.argmin(dim=1)  # argmin returns the first of equal minima
