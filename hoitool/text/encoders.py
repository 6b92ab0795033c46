"""Text encoders for captions, triplets and class names, all loaded from local files (never downloaded).

Every encoder has ``identity() -> dict`` (what the embeddings depend on: kind, settings, sha256 of the
weights; it goes into the artifact's fingerprint) and ``encode(texts) -> (n, d) float32`` with unit rows.

* ``tiny[:DIM]`` -- :class:`TinyTextEncoder`, a hashed bag of words with random (seeded) vectors: for tests
  and demos, meaningless but deterministic.
* ``open_clip:MODEL:WEIGHTS`` -- a CLIP text tower through ``open_clip`` (``pip install open_clip_torch``),
  ``MODEL`` an open_clip architecture name (``ViT-B-32``), ``WEIGHTS`` its local checkpoint file.
* ``hf:DIR`` -- a CLIP text tower through ``transformers`` (``pip install transformers``): ``DIR`` holds
  the model's ``config.json``, weights and tokenizer files (``local_files_only``).
* ``file:EMBEDDINGS.npz`` -- embeddings the user computed: arrays ``texts`` (n,) and ``embeddings`` (n, d).
"""

from __future__ import annotations

import importlib
import zlib
from pathlib import Path

import numpy as np
import torch

from hoitool.errors import UsageError
from hoitool.io.digest import file_sha256

SPECS = "tiny[:DIM], open_clip:MODEL:WEIGHTS, hf:DIR or file:EMBEDDINGS.npz"


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def _require(module: str, package: str, what: str = "text encoder"):
    """Import an optional dependency or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"this {what} needs the optional package {package!r}: pip install {package}") from None


class TinyTextEncoder:
    """Hashed bag of words: each token's crc32 picks one of ``buckets`` seeded random vectors; their mean, unit length."""

    def __init__(self, dim: int = 32, buckets: int = 4096, seed: int = 0):
        if dim < 1 or buckets < 1:
            raise UsageError(f"tiny text encoder: dim and buckets must be positive, got {dim}, {buckets}")
        self.dim, self.buckets, self.seed = dim, buckets, seed
        generator = torch.Generator().manual_seed(seed)
        self.table = torch.randn(buckets, dim, generator=generator).numpy()

    def identity(self) -> dict:
        return {"kind": "tiny", "dim": self.dim, "buckets": self.buckets, "seed": self.seed}

    def encode(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            tokens = text.lower().split()
            if tokens:
                rows[i] = self.table[[zlib.crc32(t.encode()) % self.buckets for t in tokens]].mean(axis=0)
        return _unit(rows)


class OpenClipTextEncoder:
    """A CLIP text tower through ``open_clip``, from a local checkpoint file."""

    def __init__(self, model: str, weights: Path, device: str = "cpu", batch_size: int = 256):
        open_clip = _require("open_clip", "open_clip_torch")
        self.model_name, self.weights, self.batch_size, self.device = model, Path(weights), batch_size, device
        try:
            self.model, _, _ = open_clip.create_model_and_transforms(model, pretrained=str(self.weights), device=device)
            self.tokenizer = open_clip.get_tokenizer(model)
        except Exception as exc:  # noqa: BLE001 - open_clip raises RuntimeError/KeyError/... for a bad name or file
            raise UsageError(f"{weights}: open_clip could not load {model!r} from it ({exc})") from None
        self.model.eval()

    def identity(self) -> dict:
        return {"kind": "open_clip", "model": self.model_name, "weights_sha256": file_sha256(self.weights)}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = [
            self.model.encode_text(self.tokenizer(texts[i : i + self.batch_size]).to(self.device)).float().cpu().numpy()
            for i in range(0, len(texts), self.batch_size)
        ]
        return _unit(np.concatenate(out)) if out else np.zeros((0, 0), dtype=np.float32)


class HFClipTextEncoder:
    """A CLIP text tower (with its projection) through ``transformers``, from a local directory."""

    def __init__(self, directory: Path, device: str = "cpu", batch_size: int = 256):
        transformers = _require("transformers", "transformers")
        self.directory, self.device, self.batch_size = Path(directory), device, batch_size
        try:
            self.tokenizer = transformers.CLIPTokenizer.from_pretrained(str(directory), local_files_only=True)
            self.model = (
                transformers.CLIPTextModelWithProjection.from_pretrained(str(directory), local_files_only=True)
                .to(device)
                .eval()
            )
        except Exception as exc:  # noqa: BLE001 - transformers raises OSError/ValueError/... for a bad directory
            raise UsageError(f"{directory}: transformers could not load a CLIP text model from it ({exc})") from None

    def identity(self) -> dict:
        files = sorted(p for p in self.directory.rglob("*") if p.is_file())
        return {"kind": "hf", "files": {str(p.relative_to(self.directory)): file_sha256(p) for p in files}}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True, return_tensors="pt")
            out.append(self.model(**batch.to(self.device)).text_embeds.float().cpu().numpy())
        return _unit(np.concatenate(out)) if out else np.zeros((0, 0), dtype=np.float32)


class EmbeddingsFile:
    """Embeddings the user supplies: an ``.npz`` with ``texts`` (n,) and ``embeddings`` (n, d)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            with np.load(self.path, allow_pickle=False) as data:
                texts, embeddings = data["texts"], data["embeddings"]
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"{path}: not an embeddings file with arrays 'texts' and 'embeddings' ({exc})") from None
        if embeddings.ndim != 2 or len(texts) != len(embeddings):
            raise UsageError(
                f"{path}: 'embeddings' must be (n, d) with one row per entry of 'texts' "
                f"(got {embeddings.shape} for {len(texts)} texts)"
            )
        self.index = {str(text): i for i, text in enumerate(texts.tolist())}
        self.embeddings = _unit(embeddings)

    def identity(self) -> dict:
        return {"kind": "file", "sha256": file_sha256(self.path)}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = [text for text in texts if text not in self.index]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise UsageError(f"{self.path}: no embedding for the text {missing[0]!r}{more}")
        return self.embeddings[[self.index[text] for text in texts]].reshape(len(texts), -1)


def _existing(path: str, spec: str, what: str = "text encoder", specs: str = SPECS) -> Path:
    if not path:
        raise UsageError(f"{what} {spec!r}: missing path (expected {specs})")
    found = Path(path).expanduser()
    if not found.exists():
        raise UsageError(f"{what} {spec!r}: {found} does not exist (encoders are loaded from local files only)")
    return found


def parse_encoder_spec(spec: str, what: str, specs: str, kinds: tuple[str, ...]) -> tuple[str, dict]:
    """``tiny[:DIM]``, ``open_clip:MODEL:WEIGHTS``, ``hf:DIR`` or ``file:PATH`` (those in ``kinds``) -> ``(kind, arguments)``.

    The one parser of the text and image encoders' specs; a bad spec, a missing file or a file where a
    directory belongs is a UsageError naming ``what`` and the spec.
    """
    kind, _, rest = spec.partition(":")
    if kind not in kinds:
        raise UsageError(f"unknown {what} {spec!r} (expected {specs})")
    if kind == "tiny":
        try:
            return kind, {"dim": int(rest) if rest else 32}
        except ValueError:
            raise UsageError(f"{what} {spec!r}: DIM must be an integer") from None
    if kind == "open_clip":
        model, _, weights = rest.partition(":")
        if not model:
            raise UsageError(f"{what} {spec!r}: expected open_clip:MODEL:WEIGHTS")
        return kind, {"model": model, "weights": _existing(weights, spec, what, specs)}
    path = _existing(rest, spec, what, specs)
    if kind == "hf" and not path.is_dir():
        raise UsageError(f"{what} {spec!r}: {path} is not a directory")
    return kind, {"path": path}


def load_text_encoder(spec: str, device: str = "cpu"):
    """A text encoder from its spec (module docstring); bad specs, paths and missing packages are UsageErrors."""
    kind, arguments = parse_encoder_spec(spec, "text encoder", SPECS, ("tiny", "open_clip", "hf", "file"))
    if kind == "tiny":
        return TinyTextEncoder(dim=arguments["dim"])
    if kind == "open_clip":
        return OpenClipTextEncoder(arguments["model"], arguments["weights"], device=device)
    if kind == "hf":
        return HFClipTextEncoder(arguments["path"], device=device)
    return EmbeddingsFile(arguments["path"])
