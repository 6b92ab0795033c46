"""Pick the torch device from a config string."""

from __future__ import annotations

import torch

from hoitool.errors import UsageError


def resolve_device(name: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA request is a usage error."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(
            f"device {name!r} requested but CUDA is not available on this machine (use --set runtime.device=cpu)"
        )
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
