"""Frozen torchvision backbones that turn frames into feature maps (docs/extraction-models.md).

2D (ResNet family) backbones run frame by frame; 3D (video) backbones run the
T sampled frames as one clip and map the temporal feature map back to the
frames: frame ``i`` takes temporal index ``floor(i * t' / T)``. Either way
``feature_map`` returns one (C, h, w) map per sampled frame, so RoIAlign and
the stores never need to know which kind produced it.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from hoitool.errors import UsageError
from hoitool.weights import default_weights_enum, load_model


@dataclass(frozen=True)
class LayerSpec:
    dim: int  # channels
    stride: int  # spatial stride w.r.t. the input image
    temporal_stride: int  # 1 for 2D backbones
    min_frames: int = 1  # shortest clip a 3D backbone accepts up to this layer


_BASIC_2D = {"resnet18", "resnet34"}
_BOTTLENECK_2D = {
    "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "wide_resnet50_2", "wide_resnet101_2",
}
_VIDEO_RESNETS = {"r3d_18", "mc3_18", "r2plus1d_18"}
# s3d's `features` is one nn.Sequential; a layer name ends it after this many modules.
_S3D_END = {"mixed_3c": 7, "mixed_4f": 13, "mixed_5c": 16}


def _layer_table(arch: str) -> dict[str, LayerSpec]:
    """Channels and strides of each selectable layer (checked against real outputs in tests/test_backbones.py)."""
    if arch in _BASIC_2D or arch in _BOTTLENECK_2D:
        base = 64 if arch in _BASIC_2D else 256
        return {f"layer{i}": LayerSpec(base * 2 ** (i - 1), 2 ** (i + 1), 1) for i in range(1, 5)}
    if arch in _VIDEO_RESNETS:
        # Stem: stride (1, 2, 2), no max-pool; layers 2-4 halve space, and time too except in MC3's 2D layers.
        return {
            f"layer{i}": LayerSpec(64 * 2 ** (i - 1), 2 ** i, 1 if arch == "mc3_18" else 2 ** (i - 1))
            for i in range(1, 5)
        }
    if arch == "s3d":
        return {
            "mixed_3c": LayerSpec(480, 8, 2),
            "mixed_4f": LayerSpec(832, 16, 4),
            "mixed_5c": LayerSpec(1024, 32, 8, min_frames=5),
        }
    supported = sorted(_BASIC_2D | _BOTTLENECK_2D | _VIDEO_RESNETS | {"s3d"})
    raise UsageError(f"unsupported backbone {arch!r}; choose one of {', '.join(supported)}")


SUPPORTED_BACKBONES = tuple(sorted(_BASIC_2D | _BOTTLENECK_2D | _VIDEO_RESNETS | {"s3d"}))


def default_layer(arch: str) -> str:
    return "mixed_5c" if arch == "s3d" else "layer4"


def _truncate(model: nn.Module, arch: str, layer: str) -> nn.Sequential:
    """The modules from the input up to and including ``layer`` (the rest is dropped to save memory)."""
    if arch == "s3d":
        return nn.Sequential(*list(model.features.children())[: _S3D_END[layer]])
    last = int(layer[-1])
    stem = [model.conv1, model.bn1, model.relu, model.maxpool] if arch not in _VIDEO_RESNETS else [model.stem]
    return nn.Sequential(*stem, *(getattr(model, f"layer{i}") for i in range(1, last + 1)))


class Backbone:
    """A frozen feature extractor; outputs stay on ``device`` as float32."""

    def __init__(self, arch: str, layer: str, network: nn.Sequential, spec: LayerSpec, weights_spec: str,
                 weights_fingerprint: str, mean, std, device: torch.device, amp: bool):
        self.arch, self.layer, self.network = arch, layer, network
        self.kind = "3d" if arch in _VIDEO_RESNETS or arch == "s3d" else "2d"
        self.dim, self.stride, self.temporal_stride = spec.dim, spec.stride, spec.temporal_stride
        self.min_frames = spec.min_frames
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = device
        self.amp = bool(amp) and device.type == "cuda"  # autocast is never used on CPU
        self.settings = {
            "arch": arch, "layer": layer, "kind": self.kind, "dim": self.dim, "stride": self.stride,
            "temporal_stride": self.temporal_stride, "weights": weights_spec,
            "weights_fingerprint": weights_fingerprint, "mean": list(self.mean), "std": list(self.std),
            "amp": self.amp, "temporal_mapping": "floor(i * t' / T)" if self.kind == "3d" else None,
            "torchvision": torchvision.__version__,
        }
        # Content-based: where the weights file lives, the device and the library version do not make data stale.
        stable = {k: v for k, v in self.settings.items() if k not in ("weights", "torchvision")}
        digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
        self.fingerprint = f"{arch}:{layer}:{digest}"  # digest covers the weights fingerprint

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    @torch.inference_mode()
    def feature_map(self, frames: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """Normalised frames (T, 3, H, W) -> (T, C, h, w); 2D runs ``batch`` frames per pass."""
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected frames (T, 3, H, W), got {tuple(frames.shape)}")
        frames = frames.to(self.device, torch.float32)
        with self._autocast():
            if self.kind == "2d":
                return torch.cat([self.network(chunk).float() for chunk in frames.split(batch)])
            count = frames.shape[0]
            if count < self.min_frames:
                raise UsageError(
                    f"{self.arch} up to {self.layer} needs at least {self.min_frames} frames per clip, got {count}")
            clip = self.network(frames.permute(1, 0, 2, 3).unsqueeze(0)).float()[0]  # (C, t', h, w)
        steps = clip.shape[1]
        index = torch.div(torch.arange(count, device=clip.device) * steps, count, rounding_mode="floor")
        return clip.permute(1, 0, 2, 3)[index].contiguous()

    def pooled(self, frames: torch.Tensor, batch: int = 32) -> torch.Tensor:
        """Whole-frame features (T, C): the global average of each frame's feature map."""
        return self.feature_map(frames, batch).mean(dim=(2, 3))

    def embed_crops(self, crops: torch.Tensor, batch: int = 64) -> torch.Tensor:
        """Normalised crops (M, 3, S, S) -> (M, C): each crop pooled on its own (2D backbones only)."""
        if self.kind != "2d":
            raise UsageError(f"crop node features need a 2D backbone; {self.arch} is a video backbone (use roi)")
        if crops.shape[0] == 0:
            return torch.zeros(0, self.dim, device=self.device)
        return self.pooled(crops, batch)


def build_backbone(
    arch: str,
    layer: str | None = None,
    weights: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> Backbone:
    """A frozen, eval-mode backbone cut at ``layer`` (default: the last stage); never downloads weights."""
    table = _layer_table(arch)
    layer = layer or default_layer(arch)
    if layer not in table:
        raise UsageError(f"backbone {arch} has no layer {layer!r}; choose one of {', '.join(table)}")
    default_enum = default_weights_enum(arch)
    model, fingerprint = load_model(arch, weights, seed=seed, default_enum=default_enum)
    network = _truncate(model, arch, layer)
    device = torch.device(device)
    network.eval().requires_grad_(False).to(device)
    preset = default_enum.transforms()  # normalisation the weights were trained with
    weights_spec = "default" if weights is None else str(weights)
    return Backbone(arch, layer, network, table[layer], weights_spec, fingerprint, preset.mean, preset.std,
                    device, amp)
