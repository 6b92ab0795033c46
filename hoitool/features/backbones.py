"""Frozen backbones that turn frames into feature maps (docs/extraction-models.md).

2D backbones are torchvision's own classification models, found through its model
registry (``list_models`` / ``get_model_builder`` / ``get_model_weights``) and cut at a
named layer with ``torchvision.models.feature_extraction`` (any node or module name of the
traced graph; default: the last stage before the global pooling). Their channels and
stride are measured by a forward pass on the meta device, not read from a table.

3D (video) backbones run the T sampled frames as one clip and map the temporal feature map
back to the frames: frame ``i`` takes the temporal slice whose centre (in input frames, from
the layer's temporal stride and offset) is nearest (``features.common``). Their layers keep a
table, because the temporal offset of a slice's centre is a property of the network that a
shape cannot show (each entry is checked against gradients in tests/test_backbones.py).
Either way ``feature_map`` returns one (C, h, w) map per sampled frame, so RoIAlign and the
stores never need to know which kind produced it. Video models come from torchvision
(r3d_18, mc3_18, r2plus1d_18, s3d) or PyTorchVideo (i3d_r50, slowfast_r50: ``features.video_models``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import warnings
from contextlib import nullcontext
from typing import cast
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from hoitool.errors import UsageError
from hoitool.features import video_models
from hoitool.features.common import LayerSpec, nearest_slice, slice_centres
from hoitool.weights import build_seeded, default_weights_enum, load_checked, load_model, resolve_weights

TEMPORAL_MAPPING = "nearest slice centre (offset + j * temporal_stride)"

# Transformer families give token sequences (or channels-last maps), not (C, h, w) maps RoIAlign can read.
_TOKEN_FAMILIES = ("vit_", "swin_", "maxvit_")
# Top-level children of a classifier that come after its last feature map (pooling, heads, auxiliary heads).
_HEAD_CHILDREN = {"avgpool", "fc", "classifier", "dropout", "flatten", "head", "heads", "aux1", "aux2", "AuxLogits"}
MEASURE_SIZE = 224  # input side of the meta forward that measures a layer's channels and stride

_VIDEO_RESNETS = {"r3d_18", "mc3_18", "r2plus1d_18"}
# s3d's `features` is one nn.Sequential; a layer name ends it after this many modules.
_S3D_END = {"mixed_3c": 7, "mixed_4f": 13, "mixed_5c": 16}
_PYTORCHVIDEO = set(video_models.LAYERS)
_VIDEO = _VIDEO_RESNETS | {"s3d"} | _PYTORCHVIDEO


def image_archs() -> list[str]:
    """torchvision's 2D classification models whose stages are (C, h, w) maps, from its own registry."""
    names = torchvision.models.list_models(module=torchvision.models)
    return [name for name in names if not name.startswith(_TOKEN_FAMILIES)]


def supported_backbones() -> list[str]:
    """Every arch ``build_backbone`` takes: the 2D registry's and the video models, sorted."""
    return sorted(set(image_archs()) | _VIDEO)


def _check_arch(arch: str) -> None:
    """A one-line UsageError naming close archs, before any weights are read."""
    known = supported_backbones()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=4, cutoff=0.5)
        hint = f"close: {', '.join(close)}" if close else "hoitool extract features --list-backbones lists them"
        raise UsageError(f"unsupported backbone {arch!r} ({hint})")


def _layer_table(arch: str) -> dict[str, LayerSpec]:
    """Channels and strides of each selectable layer of a video backbone (checked against real outputs in tests)."""
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
    raise UsageError(f"{arch!r} is not a video backbone")


def default_image_layer(model: nn.Module) -> str:
    """The last top-level stage before the pooling and the head: the last feature map (layer4 of a ResNet)."""
    stages = [name for name, _ in model.named_children() if name not in _HEAD_CHILDREN]
    return stages[-1]


_FAMILY_DEFAULTS: dict[str, str | None] = {}  # None: the family's builder cannot run on the meta device


def _family_default(arch: str) -> str | None:
    """The default layer of ``arch``'s family, found once per family: one torchvision module builds one class,
    so its models share their stage names (resnet18 ... wide_resnet101_2: layer4)."""
    family = torchvision.models.get_model_builder(arch).__module__
    if family not in _FAMILY_DEFAULTS:
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")  # some builders warn about their default initialisation
                _FAMILY_DEFAULTS[family] = default_image_layer(torchvision.models.get_model(arch, weights=None))
        except (NotImplementedError, RuntimeError):  # e.g. RegNet's initialisation copies tensors
            _FAMILY_DEFAULTS[family] = None
    return _FAMILY_DEFAULTS[family]


def default_layer(arch: str) -> str | None:
    """The layer read when none is given (2D: one network of its family built on the meta device finds it;
    None where that cannot run: the built network itself tells, see :func:`default_image_layer`)."""
    if arch in _VIDEO:
        return _video_default(arch)
    _check_arch(arch)
    return _family_default(arch)


def _video_default(arch: str) -> str:
    """A video backbone's last layer."""
    if arch in _PYTORCHVIDEO:
        return video_models.DEFAULT_LAYER[arch]
    return "mixed_5c" if arch == "s3d" else "layer4"


def weights_file(arch: str) -> str:
    """The file name of the arch's default weights, as it must lie under $TORCH_HOME/hub/checkpoints/."""
    entry = video_models.WEIGHTS[arch] if arch in _PYTORCHVIDEO else default_weights_enum(arch)
    return os.path.basename(urlparse(entry.url).path)


def backbone_table(archs: list[str] | None = None) -> list[dict]:
    """One row per arch: kind, default layer (video: every layer, with dims and strides), weights file.

    2D rows find their default layer by building the network on the meta device (no weights, no
    compute); an arch whose builder cannot run there shows ``None`` (it is found when built).
    """
    rows = []
    for arch in supported_backbones() if archs is None else archs:
        row: dict = {"arch": arch, "kind": "3d" if arch in _VIDEO else "2d", "weights": weights_file(arch)}
        if arch in _VIDEO:
            table = _layer_table(arch)
            row.update(layers=list(table), default=_video_default(arch), specs=table)
            row["source"] = "PyTorchVideo model zoo" if arch in _PYTORCHVIDEO else "torchvision"
            row["available"] = video_models.available() if arch in _PYTORCHVIDEO else True
        else:
            row.update(layers=None, default=default_layer(arch), specs=None, source="torchvision", available=True)
        rows.append(row)
    return rows


def _truncate(model: nn.Module, arch: str, layer: str) -> nn.Sequential:
    """A video network's modules from the input up to and including ``layer`` (the rest is dropped)."""
    if arch == "s3d":
        return nn.Sequential(*list(cast(nn.Module, model.features).children())[: _S3D_END[layer]])
    last = int(layer[-1])
    names = ["stem", *(f"layer{i}" for i in range(1, last + 1))]
    return nn.Sequential(*(cast(nn.Module, getattr(model, name)) for name in names))


class LayerOutput(nn.Module):
    """A ``create_feature_extractor`` graph that returns its one node's map instead of a dict."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)["map"]


def _graph_names(model: nn.Module) -> list[str]:
    """The eval-mode nodes of the traced network and the modules that hold them (``layer4``, ``layer4.2``...)."""
    from torchvision.models.feature_extraction import get_graph_node_names

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "eval nodes are a subsequence of train nodes"
        _, nodes = get_graph_node_names(model.eval())
    modules = {name for name, _ in model.named_modules() if name}
    return list(dict.fromkeys([*nodes, *(name for name in modules if any(n.startswith(name + ".") for n in nodes))]))


def _check_layer(arch: str, layer: str, names: list[str]) -> None:
    if layer not in names:
        close = difflib.get_close_matches(layer, names, n=4, cutoff=0.6)
        hint = f"close: {', '.join(close)}" if close else f"e.g. {', '.join(names[-6:])}"
        raise UsageError(f"backbone {arch} has no layer {layer!r} ({hint})")


def measure(network: nn.Module, size: int = MEASURE_SIZE) -> LayerSpec:
    """Channels and spatial stride of a 2D network's output, from a forward pass on the meta device.

    The network's parameters and buffers are stood in for by meta tensors of the same shapes
    (``torch.func.functional_call``): shapes only, no compute, no copy of the weights.
    """
    tensors = {**dict(network.named_parameters()), **dict(network.named_buffers())}
    meta = {name: torch.empty_like(tensor, device="meta") for name, tensor in tensors.items()}
    with torch.no_grad():
        out = torch.func.functional_call(network, meta, (torch.empty(1, 3, size, size, device="meta"),))
    if out.ndim != 4:
        raise UsageError(f"its output {tuple(out.shape)} is not a (C, h, w) feature map")
    return LayerSpec(int(out.shape[1]), round(size / int(out.shape[-1])), 1)


def _image_network(arch: str, layer: str | None, weights, seed: int) -> tuple[nn.Module, str, LayerSpec, str]:
    """torchvision's ``arch`` cut at ``layer``: (network, layer, spec, weights fingerprint); checks before weights."""
    from torchvision.models.feature_extraction import create_feature_extractor

    builder = torchvision.models.get_model_builder(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GoogLeNet / Inception warn about their default initialisation
        model = build_seeded(builder, seed, weights=None)
    layer = layer or default_image_layer(model)
    if layer not in dict(model.named_modules()):  # a module is a valid cut; any other name must be a traced node
        _check_layer(arch, layer, _graph_names(model))
    state, fingerprint = resolve_weights(arch, weights, default_weights_enum(arch), seed=seed)
    if state is not None:
        load_checked(model, state, f"{weights or 'default weights'} ({arch})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = LayerOutput(create_feature_extractor(model.eval(), return_nodes={layer: "map"}))
        spec = measure(network)
    except (UsageError, ValueError, RuntimeError) as exc:  # e.g. a module the eval graph never calls (an aux head)
        raise UsageError(f"backbone {arch} layer {layer!r}: {str(exc).splitlines()[0]}") from None
    return network, layer, spec, fingerprint


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
    """A frozen, eval-mode backbone cut at ``layer`` (default: the last stage); never downloads weights.

    An unknown arch or layer is a UsageError naming close ones, raised before any weights are read.
    """
    _check_arch(arch)
    if arch in _VIDEO:
        table = _layer_table(arch)
        layer = layer or _video_default(arch)
        if layer not in table:
            raise UsageError(f"backbone {arch} has no layer {layer!r}; choose one of {', '.join(table)}")
        spec = table[layer]
        if arch in _PYTORCHVIDEO:
            network, fingerprint = video_models.build_network(arch, layer, weights, seed)
            mean, std = video_models.MEAN, video_models.STD
        else:
            default_enum = default_weights_enum(arch)
            model, fingerprint = load_model(arch, weights, seed=seed, default_enum=default_enum)
            network = _truncate(model, arch, layer)
            preset = default_enum.transforms()  # normalisation the weights were trained with
            mean, std = preset.mean, preset.std
    else:
        network, layer, spec, fingerprint = _image_network(arch, layer, weights, seed)
        preset = default_weights_enum(arch).transforms()
        mean, std = preset.mean, preset.std
    device = torch.device(device)
    network.eval().requires_grad_(False).to(device)
    weights_spec = "default" if weights is None else str(weights)
    return Backbone(arch, layer, network, spec, weights_spec, fingerprint, mean, std, device, amp)
