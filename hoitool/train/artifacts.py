"""The run directory a training stage owns, and the teacher artifact ``distill`` reads.

Layout (docs/training.md)::

    RUN/run.json                 what was trained (kind, view, classes, ...) for eval/report
    RUN/config.resolved.yaml     the full config; --resume refuses a different one
    RUN/checkpoints/last.pt      full training state, every epoch
    RUN/checkpoints/best.pt      weights of the best epoch on the val split
    RUN/metrics.jsonl            one line per epoch
    RUN/outputs.npz/.json        logits of every video and view of every split (hoitool.eval.runs)
    RUN/peer/...                 the second model of a --dml run (run.json, best.pt, outputs)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml

from hoitool import __version__
from hoitool.cli import console
from hoitool.errors import HoitoolError, StaleArtifactError, UsageError
from hoitool.eval.runs import OUTPUTS_JSON, RUN_INFO, load_run
from hoitool.io.digest import file_sha256
from hoitool.io.atomic import read_jsonl, write_json, write_text

CONFIG_FILE = "config.resolved.yaml"
METRICS_FILE = "metrics.jsonl"
PEER_DIR = "peer"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def last_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / "last.pt"


def best_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / "best.pt"


def is_run_dir(path: Path) -> bool:
    return any((Path(path) / name).exists() for name in (RUN_INFO, CONFIG_FILE, "checkpoints", METRICS_FILE))


def decide_run_dir(out: Path, resume: bool, force: bool) -> str:
    """``"fresh"``, ``"resume"`` or ``"replace"`` (delete, then fresh) for the directory ``out``.

    * a new or empty directory: fresh start;
    * an existing run without ``--resume``: refused unless ``--force`` (replace it);
    * ``--resume``: resume when ``last.pt`` exists, else start fresh (safe to repeat).
    """
    out = Path(out)
    if not out.exists() or not any(out.iterdir()):
        return "fresh"
    if resume:
        return "resume" if last_checkpoint(out).exists() else "fresh"
    if not force:
        raise UsageError(f"{out}: already holds a run; use --resume to continue it or --force to start over")
    if not is_run_dir(out):
        raise UsageError(f"{out}: exists and is not a hoitool run directory; refusing to delete it (choose another --out)")
    return "replace"


def delete_run_dir(out: Path) -> None:
    console.info(f"{out}: --force: deleting the previous run")
    shutil.rmtree(out)


def saved_config(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        return None
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def write_run_files(run_dir: Path, info: dict, config: dict | None) -> None:
    """``run.json`` (and ``config.resolved.yaml``) written atomically."""
    run_dir = Path(run_dir)
    write_json(run_dir / RUN_INFO, info)
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


def outputs_provenance(run_dir: Path, features_path: Path, features_fingerprint: str, best_epoch: int | None,
                       teacher: dict | None) -> dict:
    """What the outputs were computed from; ``distill`` re-checks the first two before trusting them."""
    checkpoint = best_checkpoint(run_dir)
    return {
        "checkpoint": {"path": str(checkpoint.relative_to(run_dir)), "sha256": file_sha256(checkpoint), "epoch": best_epoch},
        "features": {"path": str(Path(features_path).resolve()), "fingerprint": features_fingerprint},
        "teacher": teacher,
        "hoitool_version": __version__,
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


def load_teacher_logits(teacher_dir: Path, features_fingerprint: str, video_ids: list[str], views: int,
                        classes: list[str], force: bool) -> np.ndarray:
    """The teacher's train-split logits, ``(len(video_ids), views, C)``, matched by video id and view.

    Refuses (StaleArtifactError, ``--force`` overrides) outputs computed from a
    different features store or from a checkpoint other than the teacher's
    ``best.pt`` on disk.
    """
    teacher_dir = Path(teacher_dir)
    run = load_run(teacher_dir)
    outputs_json = teacher_dir / OUTPUTS_JSON
    if run.classes != list(classes):
        raise UsageError(f"{teacher_dir / RUN_INFO}: the teacher's classes differ from the manifest's ({len(run.classes)} vs {len(classes)})")
    _check_teacher_provenance(teacher_dir, outputs_json, run.provenance, features_fingerprint, force)
    rows = {}
    for row in np.flatnonzero(run.split == "train"):
        rows[(str(run.video_ids[row]), int(run.view_index[row]))] = row
    table = np.zeros((len(video_ids), views, run.logits.shape[1]), dtype=np.float32)
    missing = []
    for position, video_id in enumerate(video_ids):
        for view in range(views):
            row = rows.get((video_id, view))
            if row is None:
                missing.append(f"{video_id} view {view}")
            else:
                table[position, view] = run.logits[row]
    if missing:
        raise HoitoolError(f"{outputs_json}: no teacher logits (train split) for {missing[0]}"
                           + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    return table


def _check_teacher_provenance(teacher_dir: Path, outputs_json: Path, provenance: dict, features_fingerprint: str, force: bool) -> None:
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
        raise StaleArtifactError(message + "; refresh the teacher (train-teacher --resume, or retrain it on this store) or use --force")
    console.info(f"warning: {message}; used anyway (--force)")
