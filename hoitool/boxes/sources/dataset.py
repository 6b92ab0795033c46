"""Source ``dataset``: the boxes the manifest names for each video (synthetic ground truth, CAD-120, Something-Else)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hoitool.boxes.registry import MANIFEST_BOXES, register_box_source
from hoitool.boxes.sources.common import FileBoxes, annotated_frames
from hoitool.errors import HoitoolError

if TYPE_CHECKING:
    from hoitool.manifest import Manifest


@dataclass(frozen=True)
class DatasetSource:
    name: str = "dataset"
    summary: str = "the manifest's own boxes, e.g. the synthetic ground truth or CAD-120"
    needs: str = MANIFEST_BOXES

    def check(self, config: dict) -> None:
        """Each video's annotation file is checked as it is read (a video without one fails alone)."""

    def read(self, manifest: Manifest, video: Any, indices: Any, config: dict) -> dict:
        if not video.annotations:
            raise HoitoolError(f"video {video.id!r}: the manifest names no annotation file (source=dataset)")
        return {"annotated": annotated_frames(manifest.resolve(video.annotations), video.id)}

    def start(self, config: dict) -> FileBoxes:
        return FileBoxes()


register_box_source(DatasetSource())
