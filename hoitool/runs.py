"""The run directory: its layout, hoitool's marker, its config, metrics, checkpoints and outputs.

One home for what a training stage writes and what eval, report and distill read (``hoitool.train``
and ``hoitool.eval`` both import it; it imports neither, nor torch). Layout (docs/training.md)::

    RUN/run.json                 hoitool's marker (format hoitool.run/1, written first) and what was
                                 trained (kind, view, classes, ...) for eval/report
    RUN/.hoitool.lock            held (flock) by the one process training into RUN
    RUN/config.resolved.yaml     the full config; resuming refuses a different one (hoitool.resume)
    RUN/checkpoints/last.pt      full training state, every epoch
    RUN/checkpoints/best.pt      weights of the best epoch on the val split
    RUN/metrics.jsonl            one line per epoch
    RUN/tensorboard/main|peer/   TensorBoard event files of those lines (train.tensorboard)
    RUN/outputs.npz/.json        logits of every video and view of every split (:func:`write_outputs`)
    RUN/peer/...                 the second model of a --dml run (run.json, best.pt, outputs)
    RUN/eval/...                 written by ``hoitool eval``

``outputs.npz`` holds one row per (video, test-time view) with the model's logits and the targets;
``outputs.json`` holds its provenance plus the SHA-256 of the ``.npz``, so a torn pair (new arrays,
old provenance) is detected, not read.

Ownership: hoitool writes into, resumes, or deletes (``--force``) only a directory
that is missing, empty, or holds its ``run.json`` marker of the same kind, and
``--force`` deletes only the files listed here (:data:`OWNED`), never another file
that happens to be in the directory.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from hoitool import __version__, log
from hoitool.errors import StaleArtifactError, UsageError
from hoitool.io.atomic import atomic_path, read_jsonl, write_json, write_text
from hoitool.io.digest import file_sha256
from hoitool.io.gitinfo import code_commit
from hoitool.io.lock import exclusive_lock

RUN_INFO = "run.json"
OUTPUTS_NPZ = "outputs.npz"
OUTPUTS_JSON = "outputs.json"
OUTPUT_ARRAYS = ("video_ids", "view_index", "split", "logits", "targets")
EVAL_DIR = "eval"  # where hoitool eval writes inside a run (owned by the run)
TENSORBOARD_DIR = "tensorboard"  # train.tensorboard's event files (hoitool.train.board)
RUN_FORMAT = "hoitool.run/1"
KINDS = ("teacher", "student", "dml")
CONFIG_FILE = "config.resolved.yaml"
METRICS_FILE = "metrics.jsonl"
LOCK_FILE = ".hoitool.lock"
LOCK_GRACE_S = 3.0  # workers of a just-killed run may need a moment to die (and drop the lock)
PEER_DIR = "peer"
DATASET_MARKER = "manifest.json"  # a prepared dataset (hoitool prepare) is never taken for a run
# What training methods write beside the outputs (hoitool.train.methods): node embeddings, text embeddings.
METHOD_FILES = ("embeddings.npz", "embeddings.json", "text_embeddings.npz", "text_embeddings.json")

# What hoitool writes in a run directory (glob patterns per folder), each also with the temporaries
# of hoitool.io.atomic (".<name>.*.tmp"): all that --force deletes.
_EVAL_FILES = (
    "metrics_*.json",
    "per_class_*.csv",
    "per_class_*.png",
    "per_class_*.pdf",
    "per_class_*.svg",
    "confusion_*.csv",
    "confusion_*.png",
    "confusion_*.pdf",
    "confusion_*.svg",
    "submission_*.txt",
    "lead_times_*.json",
    "*_map.json",
    "*_ap.csv",
)
OWNED = {
    ".": (RUN_INFO, CONFIG_FILE, METRICS_FILE, OUTPUTS_NPZ, OUTPUTS_JSON, *METHOD_FILES),
    "checkpoints": ("last.pt", "best.pt"),
    EVAL_DIR: _EVAL_FILES,
    PEER_DIR: (RUN_INFO, OUTPUTS_NPZ, OUTPUTS_JSON),
    f"{PEER_DIR}/checkpoints": ("best.pt",),
    f"{PEER_DIR}/{EVAL_DIR}": _EVAL_FILES,
    TENSORBOARD_DIR: (),
    f"{TENSORBOARD_DIR}/main": ("events.out.tfevents.*",),
    f"{TENSORBOARD_DIR}/peer": ("events.out.tfevents.*",),
}


# -- layout, marker, lock, config, metrics ------------------------------------
def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def last_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / "last.pt"


def best_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / "best.pt"


def run_marker(path: Path) -> dict | None:
    """The ``run.json`` hoitool wrote in ``path`` (format and kind checked), or None."""
    try:
        info = json.loads((Path(path) / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("format") != RUN_FORMAT or info.get("kind") not in KINDS:
        return None
    return info


def _entries(path: Path) -> list[str]:
    """What a directory holds, apart from the lock file and a torn first ``run.json`` write of an earlier run."""

    def leftover(name: str) -> bool:
        return name == LOCK_FILE or (name.startswith(f".{RUN_INFO}.") and name.endswith(".tmp"))

    return sorted(entry.name for entry in path.iterdir() if not leftover(entry.name))


def inspect_run_dir(out: Path, kind: str) -> str:
    """``"empty"`` (missing or empty) or ``"ours"`` (hoitool's run of ``kind``); anything else is refused.

    Read-only: called before any other work so a refused command touches nothing. Whether hoitool's
    run is resumed, replaced or refused is :func:`hoitool.resume.decide`'s call (hoitool.train.state).
    """
    out = Path(out)
    if not out.exists():
        return "empty"
    if not out.is_dir():
        raise UsageError(f"{out}: is a file, not a run directory; choose another --out")
    if not _entries(out):
        return "empty"
    marker = run_marker(out)
    if marker is not None:
        if marker["kind"] != kind:
            raise UsageError(
                f"{out}: holds a {marker['kind']} run, not a {kind} run; refusing to touch it (choose another --out)"
            )
        return "ours"
    if (out / DATASET_MARKER).exists():
        raise UsageError(
            f"{out}: holds a prepared dataset ({DATASET_MARKER}), not a run; refusing to touch it (choose another --out)"
        )
    what = (
        f"its {RUN_INFO} lacks hoitool's marker (format {RUN_FORMAT})"
        if (out / RUN_INFO).exists()
        else f"no {RUN_INFO} marker"
    )
    raise UsageError(
        f"{out}: is not empty and is not a hoitool run directory ({what}); "
        "refusing to write into it or delete anything (choose another --out)"
    )


def lock_run_dir(out: Path):
    """Create ``out`` if needed and hold its lock: one training process per run directory."""
    out = Path(out)
    return exclusive_lock(
        out / LOCK_FILE,
        f"{out}: another hoitool process is training into this run directory; wait for it to finish (or stop it) first",
        grace_s=LOCK_GRACE_S,
    )


def delete_run_files(out: Path) -> list[str]:
    """Delete the files hoitool wrote in ``out`` (:data:`OWNED`); return what was kept (not ours)."""
    out = Path(out)
    for folder, patterns in OWNED.items():
        directory = out / folder
        if not directory.is_dir():
            continue
        for pattern in patterns + tuple(f".{pattern}.*.tmp" for pattern in patterns):
            for path in directory.glob(pattern):
                if path.is_file() or path.is_symlink():
                    path.unlink()
    for folder in sorted(OWNED, key=len, reverse=True):  # now-empty folders of ours, deepest first
        directory = out / folder
        if folder != "." and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    return [str(path.relative_to(out)) for path in sorted(out.rglob("*")) if path.is_file() and path.name != LOCK_FILE]


def replace_run_dir(out: Path) -> None:
    """Start ``out`` over (:data:`hoitool.resume.Decision.REPLACE`: ``--force``, or no ``last.pt`` yet), saying what was kept."""
    saved = last_checkpoint(out).exists()
    kept = delete_run_files(out)
    note = (
        f" (kept {len(kept)} file(s) hoitool did not write: {', '.join(kept[:3])}{', ...' if len(kept) > 3 else ''})"
        if kept
        else ""
    )
    why = "--force: deleting the files of the previous run" if saved else "no epoch was saved yet: starting over"
    log.info(f"{out}: {why}{note}")


def saved_config(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_run_files(run_dir: Path, info: dict, config: dict | None) -> None:
    """``run.json`` with hoitool's marker first, then ``config.resolved.yaml``, each atomically."""
    run_dir = Path(run_dir)
    write_json(run_dir / RUN_INFO, dict(info, format=RUN_FORMAT))
    if config is not None:
        write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=True, default_flow_style=False))


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop metric lines of epochs after the checkpoint (written just before a crash), so resumed logs are exact."""
    path = Path(run_dir) / METRICS_FILE
    records = read_jsonl(path)
    kept = [record for record in records if record.get("epoch", 0) <= last_epoch]
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []
    if len(kept) != len(lines):
        write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in kept))


def outputs_provenance(
    run_dir: Path, features_path: Path, features_fingerprint: str, best_epoch: int | None, teacher: dict | None
) -> dict:
    """What the outputs were computed from; ``distill`` re-checks the first two before trusting them."""
    checkpoint = best_checkpoint(run_dir)
    return {
        "checkpoint": {
            "path": str(checkpoint.relative_to(run_dir)),
            "sha256": file_sha256(checkpoint),
            "epoch": best_epoch,
        },
        "features": {"path": str(Path(features_path).resolve()), "fingerprint": features_fingerprint},
        "teacher": teacher,
        "hoitool_version": __version__,
        "code_commit": code_commit(),
    }


def outputs_current(run_dir: Path) -> bool:
    """True when the run's outputs exist and were computed from the ``best.pt`` on disk."""
    path = Path(run_dir) / OUTPUTS_JSON
    if not path.exists() or not best_checkpoint(run_dir).exists():
        return False
    try:
        recorded = json.loads(path.read_text(encoding="utf-8")).get("checkpoint", {}).get("sha256")
    except ValueError:
        return False
    return recorded == file_sha256(best_checkpoint(run_dir))


# -- outputs ------------------------------------------------------------------
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
