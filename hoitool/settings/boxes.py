"""``extract boxes``: every setting and its default (the one home of these defaults)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from hoitool.boxes.registry import describe_box_sources, list_box_sources
from hoitool.settings.base import Section

Device = str  # auto, cpu, cuda, cuda:N (checked by hoitool.device.resolve_device)


class BoxModelSettings(Section):
    arch: Literal["fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2"] = Field(
        "fasterrcnn_resnet50_fpn", description="torchvision detector whose RPN/heads give the boxes"
    )
    weights: str | None = Field(
        None, description="weights file; none: torchvision's cache under TORCH_HOME; 'random' for tests"
    )
    seed: int = Field(0, description="seed of random weights")
    nms_iou: float | None = Field(
        None, gt=0, le=1, description="NMS IoU; none: 0.7 for rpn proposals, 0.5 for detector outputs"
    )
    score_threshold: float = Field(0.0, ge=0, le=1, description="drop boxes scoring below this")
    min_size: int = Field(800, ge=32, description="Faster R-CNN's internal resize: shorter side")
    max_size: int = Field(1333, ge=32, description="Faster R-CNN's internal resize: longest side at most")


class BoxesRuntime(Section):
    device: Device = Field("auto", description="auto, cpu, cuda or cuda:N")
    workers: int = Field(2, ge=0, description="DataLoader workers decoding videos ahead of the model")
    batch_frames: int = Field(8, ge=1, description="frames per forward pass of the box model")


class BoxesSettings(Section):
    source: str = Field("rpn", description=f"where boxes come from: {describe_box_sources()}")
    frames: int = Field(32, ge=1, description="T: frames sampled uniformly per clip")
    clips: int = Field(1, ge=1, description="temporal clips per video (views for test-time fusion; 10 for Charades)")
    top_k: int = Field(15, ge=1, description="K: boxes kept per frame (best scores)")
    import_file: str | None = Field(None, description="boxes JSON-lines file for source=import (docs/boxes-jsonl.md)")
    model: BoxModelSettings = Field(default_factory=BoxModelSettings)
    runtime: BoxesRuntime = Field(default_factory=BoxesRuntime)

    @field_validator("source")
    @classmethod
    def _registered_source(cls, name: str) -> str:
        """Any source in the registry (hoitool.boxes.registry), so adding one needs no change here."""
        if name not in list_box_sources():
            raise ValueError(f"must be a registered box source ({', '.join(list_box_sources())})")
        return name
