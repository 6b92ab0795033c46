"""Content hashes of files (weights, manifests, checkpoints, outputs) for provenance and staleness checks."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path | str) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def short_digest(sha256: str) -> str:
    """The first 16 hex digits of a sha256: enough to see a change, short enough for a one-line refusal."""
    return sha256[:16]
