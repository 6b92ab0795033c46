"""Content fingerprints: what a downstream stage records to notice a changed upstream store."""

from __future__ import annotations

import hashlib
import json

import numpy as np


def video_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes of one video's arrays (order independent)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def store_fingerprint(kind: str, digests: dict[str, str]) -> str:
    """Fingerprint of a whole store from its videos' digests (16 hex chars are plenty)."""
    payload = json.dumps({"kind": kind, "videos": sorted(digests.items())}, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def config_fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
