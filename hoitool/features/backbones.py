"""Frozen backbones that turn frames into feature maps (docs/extraction-models.md).

2D (ResNet family) backbones run frame by frame; 3D (video) backbones run the
T sampled frames as one clip and map the temporal feature map back to the
frames: frame ``i`` takes the temporal slice whose centre (in input frames,
from the layer's temporal stride and offset) is nearest (``features.common``).
Either way ``feature_map`` returns one (C, h, w) map per sampled frame, so
RoIAlign and the stores never need to know which kind produced it. Video
models come from torchvision (r3d_18, mc3_18, r2plus1d_18, s3d) or
PyTorchVideo (i3d_r50, slowfast_r50: ``features.video_models``).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from typing import cast

import torch
import torchvision
from torch import nn

from hoitool.errors import UsageError
from hoitool.features import video_models
from hoitool.features.common import LayerSpec, nearest_slice, slice_centres
from hoitool.weights import default_weights_enum, load_model

TEMPORAL_MAPPING = "nearest slice centre (offset + j * temporal_stride)"

_BASIC_2D = {"resnet18", "resnet34"}
_BOTTLENECK_2D = {
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
}
_VIDEO_RESNETS = {"r3d_18", "mc3_18", "r2plus1d_18"}
# s3d's `features` is one nn.Sequential; a layer name ends it after this many modules.
_S3D_END = {"mixed_3c": 7, "mixed_4f": 13, "mixed_5c": 16}
_PYTORCHVIDEO = set(video_models.LAYERS)
_VIDEO = _VIDEO_RESNETS | {"s3d"} | _PYTORCHVIDEO
SUPPORTED_BACKBONES = tuple(sorted(_BASIC_2D | _BOTTLENECK_2D | _VIDEO))


def _layer_table(arch: str) -> dict[str, LayerSpec]:
    """Channels and strides of each selectable layer (checked against real outputs in tests/test_backbones.py)."""
    if arch in _BASIC_2D or arch in _BOTTLENECK_2D:
        base = 64 if arch in _BASIC_2D else 256
        return {f"layer{i}": LayerSpec(base * 2 ** (i - 1), 2 ** (i + 1), 1) for i in range(1, 5)}
    if arch in _VIDEO_RESNETS:
        # Stem: stride (1, 2, 2), no max-pool; layers 2-4 halve space, and time too except in MC3's 2D layers.
        return {
            f"layer{i}": LayerSpec(64 * 2 ** (i - 1), 2**i, 1 if arch == "mc3_18" else 2 ** (i - 1))
            for i in range(1, 5)
        }
    if arch == "s3d":
        # Temporal stride 2 from the first (size 7, padded) convolution, x2 from the size-3 padded pool
        # before mixed_4b, x2 from the size-2 unpadded pool before mixed_5b (which adds 0.5 x 4 = 2).
        return {
            "mixed_3c": LayerSpec(480, 8, 2),
            "mixed_4f": LayerSpec(832, 16, 4),
            "mixed_5c": LayerSpec(1024, 32, 8, min_frames=5, temporal_offset=2.0),
        }
    if arch in _PYTORCHVIDEO:
        return {layer: spec for layer, (_, spec) in video_models.LAYERS[arch].items()}
    raise UsageError(f"unsupported backbone {arch!r}; choose one of {', '.join(SUPPORTED_BACKBONES)}")


def default_layer(arch: str) -> str:
    if arch in _PYTORCHVIDEO:
        return video_models.DEFAULT_LAYER[arch]
    return "mixed_5c" if arch == "s3d" else "layer4"


def backbone_table() -> list[dict]:
    """One row per supported arch: kind, layers and the default one, dims and strides, where its weights come from."""
    rows = []
    for arch in SUPPORTED_BACKBONES:
        table = _layer_table(arch)
        layers = list(table)
        rows.append(
            {
                "arch": arch,
                "kind": "3d" if arch in _VIDEO else "2d",
                "layers": layers,
                "default": default_layer(arch),
                "dim": {layer: table[layer].dim for layer in layers},
                "stride": {layer: table[layer].stride for layer in layers},
                "temporal_stride": {layer: table[layer].temporal_stride for layer in layers},
                "weights": "PyTorchVideo model zoo" if arch in _PYTORCHVIDEO else "torchvision",
                "available": video_models.available() if arch in _PYTORCHVIDEO else True,
            }
        )
    return rows


def _truncate(model: nn.Module, arch: str, layer: str) -> nn.Sequential:
    """The modules from the input up to and including ``layer`` (the rest is dropped to save memory)."""
    if arch == "s3d":
        return nn.Sequential(*list(cast(nn.Module, model.features).children())[: _S3D_END[layer]])
    last = int(layer[-1])
    names = ["conv1", "bn1", "relu", "maxpool"] if arch not in _VIDEO_RESNETS else ["stem"]
    names += [f"layer{i}" for i in range(1, last + 1)]
    return nn.Sequential(*(cast(nn.Module, getattr(model, name)) for name in names))


class Backbone:
    """A frozen feature extractor; outputs stay on ``device`` as float32."""

    def __init__(
        self,
        arch: str,
        layer: str,
        network: nn.Module,
        spec: LayerSpec,
        weights_spec: str,
        weights_fingerprint: str,
        mean,
        std,
        device: torch.device,
        amp: bool,
    ):
        self.arch, self.layer, self.network, self.spec = arch, layer, network, spec
        self.kind = "3d" if arch in _VIDEO else "2d"
        self.dim, self.stride, self.temporal_stride = spec.dim, spec.stride, spec.temporal_stride
        self.min_frames = spec.min_frames
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = device
        self.amp = bool(amp) and device.type == "cuda"  # autocast is never used on CPU
        video = self.kind == "3d"
        self.settings = {
            "arch": arch,
            "layer": layer,
            "kind": self.kind,
            "dim": self.dim,
            "stride": self.stride,
            "temporal_stride": self.temporal_stride,
            "weights": weights_spec,
            "weights_fingerprint": weights_fingerprint,
            "mean": list(self.mean),
            "std": list(self.std),
            "amp": self.amp,
            "temporal_mapping": TEMPORAL_MAPPING if video else None,
            "temporal_offset": spec.temporal_offset if video else None,
            "torchvision": torchvision.__version__,
        }
        if arch in _PYTORCHVIDEO:
            self.settings["pytorchvideo"] = _package_version("pytorchvideo")
        # Content-based: where the weights file lives, the device and the library versions do not make data stale.
        stable = {k: v for k, v in self.settings.items() if k not in ("weights", "torchvision", "pytorchvideo")}
        digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
        self.fingerprint = f"{arch}:{layer}:{digest}"  # digest covers the weights fingerprint

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def check_clip_length(self, count: int) -> None:
        """A UsageError unless a clip of ``count`` frames fits this backbone (checked before any work)."""
        if self.kind != "3d":
            return
        if count < self.min_frames:
            raise UsageError(
                f"{self.arch} up to {self.layer} needs at least {self.min_frames} frames per clip, got {count}"
            )
        if count % self.spec.frame_multiple:
            raise UsageError(
                f"{self.arch} needs a number of frames per clip that is a multiple of {self.spec.frame_multiple} "
                f"(its slow pathway takes every {self.spec.frame_multiple}th frame), got {count}"
            )

    def frame_slices(self, count: int, steps: list[int]) -> list[torch.Tensor]:
        """For each pathway with ``steps`` temporal slices, the slice each of the ``count`` frames takes."""
        input_frames = getattr(self.network, "input_frames", None)
        inputs = input_frames(count) if callable(input_frames) else [None]
        if len(steps) != len(inputs):
            raise ValueError(f"{self.arch}: {len(steps)} pathway outputs for {len(inputs)} pathways")
        # A pathway that sees a subset of the frames (SlowFast's slow one) strides over its own input.
        strides = [self.temporal_stride if frames is None else 1 for frames in inputs]
        offsets = [self.spec.temporal_offset if frames is None else 0.0 for frames in inputs]
        return [
            nearest_slice(slice_centres(n, stride, offset, frames), count)
            for n, stride, offset, frames in zip(steps, strides, offsets, inputs, strict=True)
        ]

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
            self.check_clip_length(count)
            out = self.network(frames.permute(1, 0, 2, 3).unsqueeze(0))
        maps = [m.float()[0] for m in (out if isinstance(out, (list, tuple)) else [out])]  # each (C_p, t_p, h, w)
        slices = self.frame_slices(count, [m.shape[1] for m in maps])
        # Per frame, each pathway's slice; pathways side by side in channels (RoIAlign is per channel, so
        # pooling the joint map is pooling each pathway and concatenating, as PySlowFast's RoI head does).
        per_frame = [m.permute(1, 0, 2, 3)[index.to(m.device)] for m, index in zip(maps, slices, strict=True)]
        return torch.cat(per_frame, dim=1)

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


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


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
    if arch in _PYTORCHVIDEO:
        network, fingerprint = video_models.build_network(arch, layer, weights, seed)
        mean, std = video_models.MEAN, video_models.STD
    else:
        default_enum = default_weights_enum(arch)
        model, fingerprint = load_model(arch, weights, seed=seed, default_enum=default_enum)
        network = _truncate(model, arch, layer)
        preset = default_enum.transforms()  # normalisation the weights were trained with
        mean, std = preset.mean, preset.std
    device = torch.device(device)
    network.eval().requires_grad_(False).to(device)
    weights_spec = "default" if weights is None else str(weights)
    return Backbone(arch, layer, network, table[layer], weights_spec, fingerprint, mean, std, device, amp)
