"""What the box sources share: a Faster R-CNN source (rpn, detector) and a source of ready-made boxes.

Neither imports torch or numpy at import time (the registry lists the sources for ``--help``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hoitool.boxes.registry import MODEL
from hoitool.errors import HoitoolError

if TYPE_CHECKING:
    import numpy as np

    from hoitool.boxes.jsonl import FrameBoxes
    from hoitool.manifest import Manifest


@functools.lru_cache(maxsize=4)
def _annotations(path: str, mtime: float) -> dict:
    """Parse a boxes file once per process (``mtime`` in the key notices edits)."""
    from hoitool.boxes.jsonl import read_boxes_jsonl

    return read_boxes_jsonl(path)


def annotated_frames(path: Path, video_id: str) -> dict[int, FrameBoxes]:
    """The boxes of ``video_id`` in a boxes JSON-lines file, by frame index; this video's failure if it has none."""
    if not path.exists():
        raise HoitoolError(f"{path}: annotation file for video {video_id!r} not found")
    frames = _annotations(str(path), path.stat().st_mtime).get(video_id)
    if frames is None:
        raise HoitoolError(f"{path}: no boxes for video {video_id!r}")
    return frames


class FileBoxes:
    """The box function of a source of ready-made boxes: each sampled frame's boxes, none where it has none."""

    def __init__(self, weights: dict[str, str] | None = None):
        self.weights = weights or {}

    def __call__(self, item: dict) -> list[list[FrameBoxes]]:
        from hoitool.boxes.jsonl import FrameBoxes

        annotated = item["annotated"]
        return [[annotated.get(int(index), FrameBoxes.empty()) for index in row] for row in item["indices"]]


class ModelBoxes:
    """The box function of a model source: the frames through the box model, ``batch_frames`` at a time."""

    def __init__(self, model: Any, batch_frames: int):
        self.model, self.batch_frames = model, batch_frames
        self.weights = {"box_model": model.fingerprint}

    def __call__(self, item: dict) -> list[list[FrameBoxes]]:
        import torch

        frames = torch.from_numpy(item["frames"])
        detected: list[FrameBoxes] = []
        for start in range(0, len(frames), self.batch_frames):
            detected.extend(self.model(frames[start : start + self.batch_frames]))
        return [[detected[slot] for slot in row] for row in item["frame_slot"]]


@dataclass(frozen=True)
class ModelSource:
    """Faster R-CNN boxes (hoitool.boxes.models): ``mode`` rpn (proposals) or detector (detections)."""

    name: str
    summary: str
    needs: str = field(default=MODEL)

    def check(self, config: dict) -> None:
        """Nothing to check before the store opens: the weights are resolved when the model is built."""

    def read(self, manifest: Manifest, video: Any, indices: np.ndarray, config: dict) -> dict:
        """Decode each sampled frame once (clips may share frames)."""
        import numpy as np

        from hoitool.video.reader import read_frames

        unique, inverse = np.unique(indices, return_inverse=True)
        return {
            "frames": read_frames(manifest.source_path(video), video.kind, unique),
            "frame_slot": inverse.reshape(indices.shape),
        }

    def start(self, config: dict) -> ModelBoxes:
        from hoitool.boxes.models import build_box_model
        from hoitool.device import resolve_device

        model = config["model"]
        box_model = build_box_model(
            self.name,
            top_k=config["top_k"],
            weights=model["weights"],
            seed=model["seed"],
            device=resolve_device(config["runtime"]["device"]),
            nms_iou=model["nms_iou"],
            score_threshold=model["score_threshold"],
            min_size=model["min_size"],
            max_size=model["max_size"],
            arch=model["arch"],
        )
        return ModelBoxes(box_model, config["runtime"]["batch_frames"])
