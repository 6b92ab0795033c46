"""Node features: one vector per (frame, box) (docs/extraction-models.md#node-features).

Two recipes, as in the paper:

* ``roi``: RoIAlign (7x7, aligned) on the backbone's feature map, then max (or
  average) over the bins (the Charades recipe, after STRG);
* ``crop``: crop each box from the frame at source resolution, resize to
  224x224 and embed it with a 2D backbone (the CAD-120 recipe, after LIGHTEN).

Invalid boxes (padding, or boxes that fell outside the crop) get zeros.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from hoitool.errors import UsageError
from hoitool.features.backbones import Backbone


def _rois(boxes, valid, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, 5) RoIs ``[frame, x1, y1, x2, y2]`` for the valid boxes, and the valid mask (T, K) on ``device``."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32, device=device)
    valid = torch.as_tensor(valid, dtype=torch.bool, device=device)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or valid.shape != boxes.shape[:2]:
        raise ValueError(
            f"expected boxes (T, K, 4) and valid (T, K), got {tuple(boxes.shape)} and {tuple(valid.shape)}"
        )
    frame = torch.arange(boxes.shape[0], device=device, dtype=torch.float32)[:, None].expand(boxes.shape[:2])
    rois = torch.cat([frame[valid][:, None], boxes[valid]], dim=1)
    return rois, valid


@torch.inference_mode()
def roi_node_features(
    feature_map: torch.Tensor,
    boxes,
    valid,
    stride: float,
    output_size: int = 7,
    sampling_ratio: int = 2,
    pool: str = "max",
) -> torch.Tensor:
    """(T, C, h, w) map + boxes (T, K, 4) in the image's pixels -> (T, K, C); one RoIAlign call for all boxes."""
    if pool not in ("max", "avg"):
        raise ValueError(f"pool must be 'max' or 'avg', not {pool!r}")
    rois, valid = _rois(boxes, valid, feature_map.device)
    count, slots = valid.shape
    out = torch.zeros(count, slots, feature_map.shape[1], dtype=feature_map.dtype, device=feature_map.device)
    if rois.shape[0]:
        bins = roi_align(
            feature_map,
            rois.to(feature_map.dtype),
            output_size,
            spatial_scale=1.0 / stride,
            sampling_ratio=sampling_ratio,
            aligned=True,
        )  # (L, C, 7, 7)
        out[valid] = bins.amax(dim=(2, 3)) if pool == "max" else bins.mean(dim=(2, 3))
    return out


@torch.inference_mode()
def crop_node_features(
    frames: torch.Tensor,
    boxes,
    valid,
    backbone: Backbone,
    crop_size: int = 224,
    batch: int = 64,
    sampling_ratio: int = 0,
) -> torch.Tensor:
    """Normalised frames (T, 3, H, W) + boxes (T, K, 4) in their pixels -> (T, K, D) crop embeddings.

    Pass the frames at source resolution (the boxes in source pixels) so that
    small objects keep their detail. Cropping and resizing is RoIAlign on the
    image itself (aligned, bilinear), in batches of ``batch`` crops so memory
    stays bounded. ``sampling_ratio`` 0 (adaptive) takes ``ceil(box / crop_size)``
    samples per output pixel and axis: plain bilinear interpolation when a box
    is enlarged, an average over the box's pixels (antialiasing) when it shrinks.
    """
    if backbone.kind != "2d":
        raise UsageError(f"crop node features need a 2D backbone; {backbone.arch} is a video backbone (use roi)")
    frames = frames.to(backbone.device, torch.float32)
    rois, valid = _rois(boxes, valid, frames.device)
    out = torch.zeros(*valid.shape, backbone.dim, device=frames.device)
    embedded = []
    for chunk in rois.split(batch) if rois.shape[0] else ():
        crops = roi_align(frames, chunk, crop_size, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True)
        embedded.append(backbone.embed_crops(crops, batch))
    if embedded:
        out[valid] = torch.cat(embedded)
    return out
