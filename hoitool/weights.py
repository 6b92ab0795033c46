"""Model weights without a network (docs/extraction-models.md#weights).

Clusters and this project's machines cannot download, so nothing here ever
does: torchvision models are always built with ``weights=None`` and the state
dict is loaded by hand from one of three places:

* ``None`` / ``"default"``: torchvision's default weights for the arch, read
  from torchvision's own cache (``torch.hub.get_dir()/checkpoints``, which
  honours ``TORCH_HOME``) and only if the file is already there;
* a path: a saved state dict (plain, or wrapped as ``{"state_dict": ...}``,
  ``{"model": ...}`` or ``{"model_state": ...}``, the PyTorchVideo / PySlowFast
  checkpoint layout);
* ``"random"``: seeded random initialisation, for tests and the demo.

Every choice yields a fingerprint that goes into the artifacts' provenance.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from hoitool.errors import HoitoolError, UsageError
from hoitool.io.digest import file_sha256

RANDOM = "random"
DEFAULT = "default"

_hash_cache: dict[tuple[str, int, int], str] = {}
# Keys under which checkpoints wrap their state dict: generic trainers, torchvision references,
# PyTorchVideo's model zoo and PySlowFast (``model_state``).
_WRAPPER_KEYS = ("state_dict", "model", "model_state")


@dataclass(frozen=True)
class ZooWeights:
    """A public checkpoint outside torchvision: its URL (whose file name torch.hub's cache uses) and how to fetch it.

    Plays the part of torchvision's weights enum for :func:`cache_path` and
    :func:`fetch_instruction`.
    """

    url: str
    fetch: str  # a Python one-liner that downloads it into torch.hub's cache


def default_weights_enum(arch: str):
    """torchvision's ``DEFAULT`` weights entry for ``arch`` (a UsageError for unknown archs)."""
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError):
        raise UsageError(f"unknown torchvision architecture {arch!r} (or it has no default weights)") from None


def cache_path(default_enum) -> Path:
    """Where torchvision keeps the file for ``default_enum`` (the name its downloader would use)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(default_enum.url).path)


def file_fingerprint(path: Path) -> str:
    """First 16 hex digits of the sha256 of the file's bytes (memoised per path, size and mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        _hash_cache[key] = file_sha256(path)[:16]
    return _hash_cache[key]


def fetch_instruction(arch: str, default_enum) -> str:
    """The one-line error for a default weights file that is not in the cache."""
    fetch = getattr(default_enum, "fetch", None) or (
        f"import torchvision; torchvision.models.get_model('{arch}', weights='DEFAULT')"
    )
    return (
        f"weights for {arch} not found at {cache_path(default_enum)}; on a machine with internet run: "
        f'python -c "{fetch}" '
        f"(or download {default_enum.url}) then copy that file there, set TORCH_HOME, "
        f"or pass --weights PATH (or --weights random for testing)"
    )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file; all mean the same to the user
        raise UsageError(f"{path}: not a loadable PyTorch weights file ({type(exc).__name__})") from None
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if (
        not isinstance(loaded, Mapping)
        or not loaded
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items())
    ):
        raise UsageError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    state = dict(loaded)
    if all(key.startswith("module.") for key in state):  # saved from DataParallel / DDP
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def resolve_weights(
    arch: str, weights: str | os.PathLike | None, default_enum=None, *, seed: int = 0
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """Return ``(state_dict or None for random init, fingerprint)`` for ``arch``; never downloads.

    ``default_enum`` is torchvision's weights entry to use for ``None``/"default"
    (looked up from the arch when omitted).
    """
    if weights is not None and str(weights) == RANDOM:
        return None, f"random:{arch}:seed{seed}"
    if weights is None or str(weights) == DEFAULT:
        default_enum = default_enum if default_enum is not None else default_weights_enum(arch)
        path = cache_path(default_enum)
        if not path.is_file():
            raise HoitoolError(fetch_instruction(arch, default_enum))
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UsageError(f"{path}: weights file not found")
    return _read_state_dict(path), file_fingerprint(path)


def build_seeded(builder: Callable[..., nn.Module], seed: int, **kwargs) -> nn.Module:
    """Call ``builder(**kwargs)`` under ``torch.manual_seed(seed)`` without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(**kwargs)


def load_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    """Load strictly, except for BatchNorm ``num_batches_tracked`` counters.

    torchvision's pretrained files come from models with FrozenBatchNorm2d,
    which has no counter, while a model built with ``weights=None`` uses
    BatchNorm2d; in eval mode both compute the same thing.
    """
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), "shape mismatch")
        raise UsageError(f"{where}: weights do not fit the model ({first})") from None
    missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]!r})")
        raise UsageError(f"{where}: weights do not fit the model: {', '.join(parts)}")


def load_model(
    arch: str,
    weights: str | os.PathLike | None,
    *,
    seed: int = 0,
    default_enum=None,
    builder: Callable[..., nn.Module] | None = None,
    **builder_kwargs,
) -> tuple[nn.Module, str]:
    """Build ``arch`` without weights and load the resolved weights.

    ``builder`` defaults to torchvision's (called with ``weights=None``); other
    model definitions (PyTorchVideo's) pass their own, which must not download.
    Returns ``(model, weights fingerprint)``; the model is built under ``seed``
    (which is what "random" weights mean) and left in eval mode.
    """
    if builder is None:
        try:
            builder = functools.partial(torchvision.models.get_model_builder(arch), weights=None)
        except ValueError:
            raise UsageError(f"unknown torchvision architecture {arch!r}") from None
    state, fingerprint = resolve_weights(arch, weights, default_enum, seed=seed)
    model = build_seeded(builder, seed, **builder_kwargs)
    if state is not None:
        load_checked(model, state, f"{weights or 'default weights'} ({arch})")
    return model.eval(), fingerprint
