"""The run directory's outputs: one writer (the trainers) and one reader (eval, report).

``outputs.npz`` holds one row per (video, test-time view) with the model's logits
and the targets; ``outputs.json`` holds its provenance plus the SHA-256 of the
``.npz``, so a torn pair (new arrays, old provenance) is detected, not read.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hoitool.errors import StaleArtifactError, UsageError
from hoitool.io.atomic import atomic_path, write_json
from hoitool.io.digest import file_sha256

RUN_INFO = "run.json"
OUTPUTS_NPZ = "outputs.npz"
OUTPUTS_JSON = "outputs.json"
OUTPUT_ARRAYS = ("video_ids", "view_index", "split", "logits", "targets")


@dataclass
class Run:
    """A run directory as eval sees it: its description and its per-view outputs."""

    path: Path
    info: dict
    video_ids: np.ndarray  # (N,) str
    view_index: np.ndarray  # (N,) int64
    split: np.ndarray  # (N,) str
    logits: np.ndarray  # (N, C) float32
    targets: np.ndarray  # (N, C) float32
    provenance: dict = field(default_factory=dict)
    outputs_sha256: str = ""
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # a method's arrays, one row each (object_logits)

    @property
    def multilabel(self) -> bool:
        return bool(self.info["multilabel"])

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    def rows(self, split: str) -> np.ndarray:
        """Indices of the rows of one split; refuses a split the run has no outputs for."""
        selected = np.flatnonzero(self.split == split)
        if selected.size == 0:
            present = ", ".join(sorted(set(self.split.tolist()))) or "none"
            raise UsageError(f"{self.path / OUTPUTS_NPZ}: no outputs for split {split!r} (present: {present})")
        return selected


def _checked_arrays(where: str, video_ids, view_index, split, logits, targets, multilabel: bool | None = None) -> dict:
    """Coerce and validate the five arrays; ``where`` names the file in the one-line error."""
    view_index = np.asarray(view_index)
    if not np.issubdtype(view_index.dtype, np.integer):
        raise UsageError(f"{where}: view_index must be integers, got {view_index.dtype}")
    try:
        arrays = {
            "video_ids": np.asarray(video_ids).astype(str),
            "view_index": view_index.astype(np.int64),
            "split": np.asarray(split).astype(str),
            "logits": np.asarray(logits, dtype=np.float32),
            "targets": np.asarray(targets, dtype=np.float32),
        }
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{where}: arrays of the wrong type ({exc})") from None
    n = arrays["video_ids"].shape[0] if arrays["video_ids"].ndim == 1 else -1
    for name in ("video_ids", "view_index", "split"):
        if arrays[name].ndim != 1 or arrays[name].shape[0] != n:
            raise UsageError(f"{where}: {name} must be 1-D with one entry per row ({arrays[name].shape} vs {n} rows)")
    for name in ("logits", "targets"):
        if arrays[name].ndim != 2 or arrays[name].shape[0] != n:
            raise UsageError(f"{where}: {name} must be (rows, classes), got {arrays[name].shape} for {n} rows")
    if arrays["logits"].shape != arrays["targets"].shape:
        raise UsageError(
            f"{where}: logits {arrays['logits'].shape} and targets {arrays['targets'].shape} differ in shape"
        )
    if not np.isfinite(arrays["logits"]).all():
        raise UsageError(f"{where}: logits contain NaN or inf (did training diverge?)")
    targets = arrays["targets"]
    if not np.isin(targets, (0.0, 1.0)).all():
        raise UsageError(f"{where}: targets must be 0/1 (one-hot or multi-hot)")
    if multilabel is False and n and not (targets.sum(axis=1) == 1).all():
        bad = int(np.flatnonzero(targets.sum(axis=1) != 1)[0])
        raise UsageError(f"{where}: single-label run but row {bad} ({arrays['video_ids'][bad]}) is not one-hot")
    order = np.lexsort((arrays["view_index"], arrays["video_ids"]))
    ids, views = arrays["video_ids"][order], arrays["view_index"][order]
    repeated = np.flatnonzero((ids[1:] == ids[:-1]) & (views[1:] == views[:-1]))
    if repeated.size:
        raise UsageError(f"{where}: video {ids[repeated[0]]} view {views[repeated[0]]} appears more than once")
    return arrays


def _checked_extra(where: str, extra: dict, rows: int) -> dict[str, np.ndarray]:
    """A method's extra arrays (e.g. ``object_logits``): numeric, one entry per row, names not the five's."""
    out = {}
    for name, value in extra.items():
        array = np.asarray(value)
        if name in OUTPUT_ARRAYS or array.ndim < 1 or array.shape[0] != rows or array.dtype.kind not in "biuf":
            raise UsageError(f"{where}: extra array {name!r} {array.shape} is not numeric with one entry per row")
        out[name] = array
    return out


def write_outputs(
    run_dir, video_ids, view_index, split, logits, targets, provenance: dict, extra: dict | None = None
) -> Path:
    """Write ``outputs.npz`` then ``outputs.json`` (each atomically) for eval and distill to read.

    One row per (video, test-time view). Targets are one-hot for single-label runs
    and multi-hot for multi-label runs. ``extra``: a method's further arrays, one
    entry per row (``Run.extra``). Returns the path of ``outputs.npz``.
    """
    run_dir = Path(run_dir)
    npz_path = run_dir / OUTPUTS_NPZ
    arrays = _checked_arrays(str(npz_path), video_ids, view_index, split, logits, targets)
    arrays.update(_checked_extra(str(npz_path), extra or {}, len(arrays["video_ids"])))
    with atomic_path(npz_path) as tmp:
        with open(tmp, "wb") as handle:  # a file object: np.savez would append ".npz" to a path
            np.savez(handle, **arrays)
    record = dict(provenance)
    record["outputs_sha256"] = file_sha256(npz_path)
    write_json(run_dir / OUTPUTS_JSON, record)
    return npz_path


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"{path}: missing (is {path.parent} a run directory?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def read_run_info(run_dir: Path | str) -> dict:
    """``run.json``, checked for the keys eval needs (``multilabel``, ``classes``)."""
    path = Path(run_dir) / RUN_INFO
    info = _read_json(path)
    if not isinstance(info.get("multilabel"), bool):
        raise UsageError(f"{path}: 'multilabel' must be true or false")
    classes = info.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise UsageError(f"{path}: 'classes' must be a non-empty list of class names")
    return info


def load_run(path: Path | str) -> Run:
    """Read ``run.json``, ``outputs.npz`` and ``outputs.json``; refuse anything missing or inconsistent."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: run directory not found")
    info = read_run_info(run_dir)
    npz_path = run_dir / OUTPUTS_NPZ
    if not npz_path.is_file():
        raise UsageError(f"{npz_path}: missing (has the run finished and written its outputs?)")
    provenance = _read_json(run_dir / OUTPUTS_JSON)
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            missing = [name for name in OUTPUT_ARRAYS if name not in data.files]
            if missing:
                raise UsageError(f"{npz_path}: missing arrays {', '.join(missing)}")
            loaded = {name: data[name] for name in OUTPUT_ARRAYS}
            extra = {name: data[name] for name in data.files if name not in OUTPUT_ARRAYS}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(f"{npz_path}: unreadable ({exc})") from None
    arrays = _checked_arrays(str(npz_path), **loaded, multilabel=info["multilabel"])
    extra = _checked_extra(str(npz_path), extra, len(arrays["video_ids"]))
    sha = file_sha256(npz_path)
    recorded = provenance.get("outputs_sha256")
    if recorded is not None and recorded != sha:
        raise StaleArtifactError(f"{npz_path}: does not match {OUTPUTS_JSON} (written by another run of the trainer?)")
    n_classes = arrays["logits"].shape[1]
    if n_classes != len(info["classes"]):
        raise UsageError(f"{npz_path}: {n_classes} classes in logits but {len(info['classes'])} in {RUN_INFO}")
    return Run(path=run_dir, info=info, provenance=provenance, outputs_sha256=sha, extra=extra, **arrays)
