"""The run directory a training stage owns, and the teacher artifact ``distill`` reads.

Layout (docs/training.md)::

    RUN/run.json                 hoitool's marker (format hoitool.run/1, written first) and what was
                                 trained (kind, view, classes, ...) for eval/report
    RUN/.hoitool.lock            held (flock) by the one process training into RUN
    RUN/config.resolved.yaml     the full config; --resume refuses a different one
    RUN/checkpoints/last.pt      full training state, every epoch
    RUN/checkpoints/best.pt      weights of the best epoch on the val split
    RUN/metrics.jsonl            one line per epoch
    RUN/tensorboard/main|peer/   TensorBoard event files of those lines (train.tensorboard)
    RUN/outputs.npz/.json        logits of every video and view of every split (hoitool.eval.runs)
    RUN/peer/...                 the second model of a --dml run (run.json, best.pt, outputs)
    RUN/eval/...                 written by ``hoitool eval``

Ownership: hoitool writes into, resumes, or deletes (``--force``) only a directory
that is missing, empty, or holds its ``run.json`` marker of the same kind, and
``--force`` deletes only the files listed here (:data:`OWNED`), never another file
that happens to be in the directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from hoitool import __version__, log
from hoitool.errors import HoitoolError, StaleArtifactError, UsageError
from hoitool.eval.evaluate import EVAL_DIR  # where eval writes inside a run (owned by the run)
from hoitool.eval.runs import OUTPUTS_JSON, OUTPUTS_NPZ, RUN_INFO, load_run, read_run_info
from hoitool.io.atomic import read_jsonl, write_json, write_text
from hoitool.io.digest import file_sha256
from hoitool.io.gitinfo import code_commit
from hoitool.io.lock import exclusive_lock
from hoitool.train.board import TENSORBOARD_DIR

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


def check_teacher_run(teacher_dir: Path) -> dict:
    """The teacher's ``run.json``, after checking the run finished (its outputs exist); one line otherwise."""
    teacher_dir = Path(teacher_dir)
    if not teacher_dir.is_dir():
        raise UsageError(f"{teacher_dir}: teacher run directory not found")
    info = read_run_info(teacher_dir)
    missing = [name for name in (OUTPUTS_NPZ, OUTPUTS_JSON) if not (teacher_dir / name).is_file()]
    if missing:
        raise UsageError(
            f"{teacher_dir}: the teacher run is not finished ({' and '.join(missing)} missing); "
            "finish it first (run its train-teacher command again: it resumes)"
        )
    return info


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


def teacher_fingerprint(teacher_dir: Path) -> dict:
    """How a student records its teacher: the run path and the sha256 of its outputs."""
    record = json.loads((Path(teacher_dir) / OUTPUTS_JSON).read_text(encoding="utf-8"))
    return {"path": str(Path(teacher_dir).resolve()), "outputs_sha256": record.get("outputs_sha256")}


def load_teacher_logits(
    teacher_dir: Path, features_fingerprint: str, video_ids: list[str], views: int, classes: list[str], force: bool
) -> np.ndarray:
    """The teacher's train-split logits, ``(len(video_ids), views, C)``, matched by video id and view.

    Refuses (StaleArtifactError, ``--force`` overrides) outputs computed from a
    different features store or from a checkpoint other than the teacher's
    ``best.pt`` on disk.
    """
    teacher_dir = Path(teacher_dir)
    run = load_run(teacher_dir)
    outputs_json = teacher_dir / OUTPUTS_JSON
    if run.classes != list(classes):
        raise UsageError(
            f"{teacher_dir / RUN_INFO}: the teacher's classes differ from the manifest's ({len(run.classes)} vs {len(classes)})"
        )
    _check_teacher_provenance(teacher_dir, outputs_json, run.provenance, features_fingerprint, force)
    rows: dict[tuple[str, int], int] = {}
    for index in np.flatnonzero(run.split == "train"):
        rows[(str(run.video_ids[index]), int(run.view_index[index]))] = int(index)
    table = np.zeros((len(video_ids), views, run.logits.shape[1]), dtype=np.float32)
    missing: list[str] = []
    for position, video_id in enumerate(video_ids):
        for view in range(views):
            row = rows.get((video_id, view))
            if row is None:
                missing.append(f"{video_id} view {view}")
            else:
                table[position, view] = run.logits[row]
    if missing:
        raise HoitoolError(
            f"{outputs_json}: no teacher logits (train split) for {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    return table


def _check_teacher_provenance(
    teacher_dir: Path, outputs_json: Path, provenance: dict, features_fingerprint: str, force: bool
) -> None:
    problems = []
    recorded_features = provenance.get("features", {}).get("fingerprint")
    if recorded_features != features_fingerprint:
        problems.append(f"made from features store {recorded_features} but the store is now {features_fingerprint}")
    checkpoint = best_checkpoint(teacher_dir)
    recorded_checkpoint = provenance.get("checkpoint", {}).get("sha256")
    if not checkpoint.exists():
        problems.append(f"its checkpoint {checkpoint} is missing")
    elif recorded_checkpoint != file_sha256(checkpoint):
        problems.append(f"made from a different checkpoint than {checkpoint}")
    if not problems:
        return
    message = f"{outputs_json}: stale teacher outputs ({'; '.join(problems)})"
    if not force:
        raise StaleArtifactError(
            message + "; refresh the teacher (train-teacher --resume, or retrain it on this store) or use --force"
        )
    log.warning(f"{message}; used anyway (--force)")
