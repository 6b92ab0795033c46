"""Content fingerprints: what a downstream stage records to notice a changed upstream store."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def _update(digest, name: str, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array)
    digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
    digest.update(array.data.cast("B") if array.size else b"")


def video_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes of one video's arrays (order independent)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        _update(digest, name, arrays[name])
    return digest.hexdigest()


def array_digests(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """One sha256 per array (same bytes as :func:`video_digest`), so a read of some arrays can be checked alone."""
    out = {}
    for name in sorted(arrays):
        digest = hashlib.sha256()
        _update(digest, name, arrays[name])
        out[name] = digest.hexdigest()
    return out


def store_fingerprint(kind: str, digests: dict[str, str]) -> str:
    """Fingerprint of a whole store from its videos' digests (16 hex chars are plenty)."""
    payload = json.dumps({"kind": kind, "videos": sorted(digests.items())}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def config_fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
