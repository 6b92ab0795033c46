"""Image encoders into a text space, for the region embeddings (CL-HOI A.3); local files only, never downloaded.

Each one has what :func:`hoitool.features.nodes.crop_node_features` reads of a backbone -- ``kind``
(``"2d"``), ``arch``, ``device``, ``dim``, ``embed_crops(crops (M, 3, S, S), batch) -> (M, dim)`` -- plus
``size`` (the crop side ``S``), ``mean``/``std`` (the normalisation it was trained with) and
``identity()`` (what the embeddings depend on: it goes into the artifact's fingerprint and is compared
with the text encoder's, :func:`hoitool.text.regions.check_same_clip`).

* ``tiny[:DIM]`` -- :class:`TinyImageEncoder`, two seeded random conv layers: for tests, deterministic
  and meaningless (pair it with the ``tiny`` text encoder only).
* ``open_clip:MODEL:WEIGHTS`` -- a CLIP image tower through ``open_clip`` (``encode_image``), the same
  spec as the text encoder's.
* ``hf:DIR`` -- a CLIP image tower through ``transformers`` (``CLIPModel.get_image_features``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hoitool.errors import UsageError
from hoitool.io.digest import file_sha256
from hoitool.text.encoders import _require, parse_encoder_spec

SPECS = "tiny[:DIM], open_clip:MODEL:WEIGHTS or hf:DIR"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's normalisation (open_clip's OPENAI_DATASET_MEAN/STD)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class _Encoder:
    """The shared part: batching crops through ``_embed`` and returning unit rows."""

    kind = "2d"
    arch = "image-encoder"
    device: torch.device
    dim: int

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def embed_crops(self, crops: torch.Tensor, batch: int = 64) -> torch.Tensor:
        if crops.shape[0] == 0:
            return torch.zeros(0, self.dim, device=crops.device)
        out = [self._embed(crops[i : i + batch].to(self.device)).float() for i in range(0, crops.shape[0], batch)]
        return F.normalize(torch.cat(out), dim=-1)


class TinyImageEncoder(_Encoder):
    """Conv(3->8, 3x3, stride 2) - ReLU - Conv(8->16, stride 2) - ReLU - mean - Linear(16->DIM), seeded, on 32x32 crops."""

    arch = "tiny"
    size = 32
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(self, dim: int = 32, seed: int = 0, device: str | torch.device = "cpu"):
        if dim < 1:
            raise UsageError(f"tiny image encoder: dim must be positive, got {dim}")
        self.dim, self.seed, self.device = dim, seed, torch.device(device)
        generator = torch.Generator().manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, dim),
        )
        with torch.no_grad():  # seeded here, never from the global RNG
            for parameter in self.net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        self.net.to(self.device).eval()

    def identity(self) -> dict:
        return {"kind": "tiny", "dim": self.dim, "seed": self.seed, "size": self.size}

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops.float())


class OpenClipImageEncoder(_Encoder):
    """A CLIP image tower through ``open_clip``, from a local checkpoint file (``encode_image``)."""

    arch = "open_clip"

    def __init__(self, model: str, weights: Path, device: str = "cpu"):
        open_clip = _require("open_clip", "open_clip_torch", "image encoder")
        self.model_name, self.weights, self.device = model, Path(weights), torch.device(device)
        try:
            self.model, _, _ = open_clip.create_model_and_transforms(model, pretrained=str(self.weights), device=device)
        except Exception as exc:  # noqa: BLE001 - open_clip raises RuntimeError/KeyError/... for a bad name or file
            raise UsageError(f"{weights}: open_clip could not load {model!r} from it ({exc})") from None
        self.model.eval()
        size = getattr(self.model.visual, "image_size", 224)
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(getattr(self.model.visual, "image_mean", None) or CLIP_MEAN)
        self.std = tuple(getattr(self.model.visual, "image_std", None) or CLIP_STD)
        self.dim = int(self.model.encode_image(torch.zeros(1, 3, self.size, self.size, device=device)).shape[-1])

    def identity(self) -> dict:
        # the text encoder's identity of the same checkpoint has the same kind, model and weights_sha256
        return {"kind": "open_clip", "model": self.model_name, "weights_sha256": file_sha256(self.weights)}

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(crops)


class HFClipImageEncoder(_Encoder):
    """A CLIP image tower (with its projection) through ``transformers``, from a local directory."""

    arch = "hf"

    def __init__(self, directory: Path, device: str = "cpu"):
        transformers = _require("transformers", "transformers", "image encoder")
        self.directory, self.device = Path(directory), torch.device(device)
        try:
            model = transformers.CLIPModel.from_pretrained(str(directory), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/... for a bad directory
            raise UsageError(f"{directory}: transformers could not load a CLIP model from it ({exc})") from None
        self.model = model.to(device).eval()
        self.size = int(model.config.vision_config.image_size)
        self.dim = int(model.config.projection_dim)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        processor = self.directory / "preprocessor_config.json"
        if processor.is_file():  # the model's own normalisation, when its directory says it
            config = json.loads(processor.read_text(encoding="utf-8"))
            self.mean = tuple(config.get("image_mean", CLIP_MEAN))
            self.std = tuple(config.get("image_std", CLIP_STD))

    def identity(self) -> dict:
        files = sorted(p for p in self.directory.rglob("*") if p.is_file())
        return {"kind": "hf", "files": {str(p.relative_to(self.directory)): file_sha256(p) for p in files}}

    def _embed(self, crops: torch.Tensor) -> torch.Tensor:
        return self.model.get_image_features(pixel_values=crops)


def load_image_encoder(spec: str, device: str = "cpu"):
    """An image encoder from its spec (module docstring); bad specs, paths and missing packages are UsageErrors."""
    kind, arguments = parse_encoder_spec(spec, "image encoder", SPECS, ("tiny", "open_clip", "hf"))
    if kind == "tiny":
        return TinyImageEncoder(dim=arguments["dim"], device=device)
    if kind == "open_clip":
        return OpenClipImageEncoder(arguments["model"], arguments["weights"], device=device)
    return HFClipImageEncoder(arguments["path"], device=device)
