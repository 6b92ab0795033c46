"""What both extraction stages share: file fingerprints, provenance, the content part of a config."""

from __future__ import annotations

from pathlib import Path

from hoitool import __version__
from hoitool.io.gitinfo import code_commit


def content_config(config: dict) -> dict:
    """The settings that change the stored arrays (``runtime`` — device, workers, batching — does not)."""
    return {key: value for key, value in config.items() if key != "runtime"}


def provenance(stage: str, config: dict, manifest: Path, upstream: dict, weights: dict, shard) -> dict:
    return {
        "stage": stage,
        "config": config,
        "manifest": str(Path(manifest).resolve()),
        "upstream": upstream,
        "weights": weights,
        "code_version": __version__,
        "code_commit": code_commit(),
        "shard": list(shard) if shard else None,
    }
