"""Which official ground-truth list a run is scored against (Charades: ``Charades_v1_test.csv``).

A Charades run's test outputs cover only the videos that were extracted; the
official metric ranks every test video of the ground-truth list, the missing ones
last. The list is found from the run itself (``run.json`` -> features store ->
manifest, whose ``extra.ground_truth`` ``prepare charades`` writes) or given by
the user (``eval RUN --gt CSV``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hoitool.errors import HoitoolError, UsageError
from hoitool.eval.charades import CharadesGT

GT_DATASETS = ("charades",)  # datasets whose official metric scores a fixed ground-truth list
GT_SPLITS = ("test",)  # the official list is the test CSV; val is drawn from the train CSV by hoitool


def needs_ground_truth(info: dict, split: str) -> bool:
    """True where the official metric is defined over a ground-truth list rather than the run's own videos."""
    return info.get("dataset") in GT_DATASETS and split in GT_SPLITS


def find_ground_truth(info: dict, split: str) -> tuple[Path | None, str]:
    """``(path, "")`` of the split's ground-truth CSV recorded at prepare time, or ``(None, why not)``."""
    from hoitool.manifest import Manifest
    from hoitool.store.reader import open_store

    features = info.get("features")
    if not features:
        return None, "run.json names no features store"
    try:
        reader = open_store(features)
        manifest_path = reader.manifest_path
        reader.close()
        if not manifest_path:
            return None, f"{features} does not name its manifest"
        manifest = Manifest.load(manifest_path)
    except (HoitoolError, OSError, ValueError, KeyError) as exc:
        return None, f"cannot read the manifest through {features} ({exc})"
    recorded = (manifest.extra.get("ground_truth") or {}).get(split)
    if not recorded:
        return (
            None,
            f"{manifest.root / 'manifest.json'} records no {split} ground truth (prepared by an older hoitool?)",
        )
    path = manifest.resolve(recorded)
    if not path.is_file():
        return None, f"{path} (recorded in the manifest) not found"
    return path, ""


def check_run_against_ground_truth(ids, targets: np.ndarray, gt: CharadesGT, gt_path: Path | str) -> None:
    """Refuse a ground truth that is not the run's: no video in common, or a video whose labels differ."""
    row_of = {video: row for row, video in enumerate(gt.ids)}
    shared = [(i, row_of[video]) for i, video in enumerate(ids) if video in row_of]
    if len(ids) and not shared:
        raise UsageError(f"{gt_path}: none of the run's {len(ids)} videos is in this ground truth (wrong --gt?)")
    for i, row in shared:
        if not np.array_equal(np.asarray(targets[i]) > 0, gt.labels[row] > 0):
            raise UsageError(f"{gt_path}: video {ids[i]}: the run's labels differ from this ground truth (wrong --gt?)")
