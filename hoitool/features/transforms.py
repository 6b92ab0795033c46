"""Frame preprocessing for the backbones, and the box mapping that goes with it.

``prepare_frames`` resizes (short side), optionally takes one of the three
square crops used in multi-view testing, and normalises. The returned
:class:`BoxTransform` maps boxes in source pixels into that image's pixels
(and back), so node features are pooled exactly where the boxes are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hoitool.errors import UsageError

CROP_NAMES = {"left": 0, "top": 0, "center": 1, "right": 2, "bottom": 2}


@dataclass(frozen=True)
class BoxTransform:
    """``image = source * scale - offset`` per axis; ``width``/``height`` are the output image's size."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    width: int
    height: int

    def to_image(self, boxes):
        """Map xyxy source boxes (numpy or torch, shape (..., 4)) into the image and clip them.

        Returns ``(boxes, empty)`` where ``empty`` (shape (...)) marks boxes
        narrower or lower than 1 pixel after clipping, i.e. outside the crop.
        """
        boxes, scale, offset, high = self._vectors(boxes)
        mapped = boxes * scale - offset
        if isinstance(mapped, torch.Tensor):
            mapped = torch.minimum(torch.clamp(mapped, min=0), high)
        else:
            mapped = np.minimum(np.maximum(mapped, 0), high)
        empty = ((mapped[..., 2] - mapped[..., 0]) < 1) | ((mapped[..., 3] - mapped[..., 1]) < 1)
        return mapped, empty

    def to_source(self, boxes):
        """Map xyxy image boxes back to source pixels (the inverse of the affine part of ``to_image``)."""
        boxes, scale, offset, _ = self._vectors(boxes)
        return (boxes + offset) / scale

    def _vectors(self, boxes):
        """Boxes as floats (float32 unless already floating) and the per-column constants in that dtype."""
        columns = (
            [self.scale_x, self.scale_y] * 2,
            [self.offset_x, self.offset_y] * 2,
            [float(self.width), float(self.height)] * 2,
        )
        if isinstance(boxes, torch.Tensor):
            boxes = boxes if boxes.is_floating_point() else boxes.float()
            return (boxes, *(torch.tensor(v, dtype=boxes.dtype, device=boxes.device) for v in columns))
        boxes = np.asarray(boxes)
        boxes = boxes if np.issubdtype(boxes.dtype, np.floating) else boxes.astype(np.float32)
        return (boxes, *(np.asarray(v, dtype=boxes.dtype) for v in columns))


def crop_index(crop: str | int) -> int | None:
    """``"none"`` -> None; left/top=0, center=1, right/bottom=2 (PySlowFast's spatial_idx)."""
    if isinstance(crop, str) and crop.lower() == "none":
        return None
    if isinstance(crop, str) and crop.lower() in CROP_NAMES:
        return CROP_NAMES[crop.lower()]
    if isinstance(crop, int) and not isinstance(crop, bool) and 0 <= crop <= 2:
        return crop
    raise UsageError(f"crop must be none, left, center, right (top/bottom) or 0, 1, 2, not {crop!r}")


def resized_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(h, w) with the short side set to ``short_side``, keeping the aspect ratio (torchvision's rounding)."""
    if short_side is None:
        return height, width
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def crop_offsets(height: int, width: int, size: int, index: int) -> tuple[int, int]:
    """(y, x) of a ``size`` square: centred, then moved to the start/end of the long side for 0/2."""
    if size > height or size > width:
        raise UsageError(f"crop size {size} is larger than the resized frame {width}x{height}")
    y, x = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    if index != 1:
        if height > width:
            y = 0 if index == 0 else height - size
        else:
            x = 0 if index == 0 else width - size
    return y, x


def prepare_frames(
    frames,
    short_side: int | None,
    crop: str | int = "none",
    crop_size: int | None = None,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, BoxTransform]:
    """uint8 frames (T, H, W, 3) -> normalised float32 (T, 3, h, w) and the source->image box mapping.

    Resizing is bilinear with antialiasing; ``crop_size`` defaults to the
    resized short side (a square crop).
    """
    video = torch.as_tensor(frames, device=device)
    if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {tuple(video.shape)} {video.dtype}")
    height, width = video.shape[1:3]
    video = video.permute(0, 3, 1, 2).float().div_(255)
    new_h, new_w = resized_size(height, width, short_side)
    if (new_h, new_w) != (height, width):
        video = F.interpolate(video, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    index = crop_index(crop)
    y = x = 0
    out_h, out_w = new_h, new_w
    if index is not None:
        size = crop_size if crop_size is not None else min(new_h, new_w)
        y, x = crop_offsets(new_h, new_w, size, index)
        video = video[:, :, y : y + size, x : x + size]
        out_h = out_w = size
    mean_t = torch.tensor(mean, dtype=video.dtype, device=video.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=video.dtype, device=video.device).view(1, 3, 1, 1)
    video = ((video - mean_t) / std_t).contiguous()
    return video, BoxTransform(new_w / width, new_h / height, float(x), float(y), out_w, out_h)
