"""``extract features``: every setting and its default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hoitool.settings.base import Section


class BackboneSettings(Section):
    arch: str = Field("resnet50", description="backbone (hoitool extract features --list-backbones)")
    layer: str | None = Field(
        None,
        description="layer whose map RoIAlign reads (2D: any module or traced node, e.g. layer3, layer4.0.relu); "
        "none: the last stage before pooling",
    )
    weights: str | None = Field(
        None, description="weights file; none: torchvision's cache under TORCH_HOME; 'random' for tests"
    )
    seed: int = Field(0, description="seed of random weights")


class FeaturesRuntime(Section):
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    workers: int = Field(2, ge=0, description="DataLoader workers decoding videos ahead of the model")
    amp: bool = Field(False, description="mixed precision (CUDA only)")


class FeaturesSettings(Section):
    backbone: BackboneSettings = Field(default_factory=BackboneSettings)
    mode: Literal["roi", "crop"] = Field(
        "roi", description="roi: RoIAlign on the frame's map; crop: embed each box crop"
    )
    pool: Literal["max", "avg"] = Field("max", description="pooling over the RoIAlign bins")
    roi_size: int = Field(7, ge=1, description="RoIAlign output bins per side")
    sampling_ratio: int = Field(2, ge=0, description="RoIAlign samples per bin (0: adaptive)")
    short_side: int = Field(224, ge=16, description="frames resized so the short side is this many pixels")
    crops: Literal[1, 3] = Field(
        1, description="1: the whole frame; 3: left/centre/right square crops (multi-view testing)"
    )
    crop_size: int = Field(224, ge=16, description="side of each box crop in mode=crop")
    flip: bool = Field(
        False,
        description="also store every view mirrored left-right (frames flipped, boxes mirrored): twice the views, "
        "a spatial augmentation training draws from; eval fuses them with the others",
    )
    frame_features: bool = Field(True, description="also store whole-frame features (baselines, context)")
    frame_maps: bool = Field(
        False,
        description="also store each frame's backbone map, average-pooled to frame_map_grid x frame_map_grid "
        "cells, float16 (array frame_maps; dual attention over map cells)",
    )
    frame_map_grid: int = Field(7, ge=1, le=32, description="cells per side of the stored frame maps")
    runtime: FeaturesRuntime = Field(default_factory=FeaturesRuntime)
