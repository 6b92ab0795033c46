"""Training's use of a teacher run: is it finished, its fingerprint, and its train-split logits for ``distill``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hoitool import log
from hoitool.errors import HoitoolError, StaleArtifactError, UsageError
from hoitool.io.digest import file_sha256
from hoitool.runs import OUTPUTS_JSON, OUTPUTS_NPZ, RUN_INFO, best_checkpoint, load_run, read_run_info


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
