"""Leave-one-subject-out cross-validation on CAD-120 (GLIDN Sec. 4.1): every fold through teacher, student and eval.

One features store serves every fold (features do not depend on the split); each fold
gets its own prepared manifest (``prepare cad120 --fold SubjectN``: that subject is
``test``, ``val`` is drawn from the other subjects only), passed to training as
``data.manifest``. Layout under ``OUT``::

    OUT/.hoitool-crossval.json     hoitool's marker (written first)
    OUT/<SubjectN>/data/           the fold's prepared manifest
    OUT/<SubjectN>/fold.json       the digest of that manifest (its runs are trained on these splits)
    OUT/<SubjectN>/teacher/        train-teacher run (its eval/ inside)
    OUT/<SubjectN>/student/        distill run from that teacher (its eval/ inside)
    OUT/crossval.json, .csv        per-fold accuracy and macro-F1, mean ± std across folds

Every step keeps hoitool's own rules: a prepared fold or a finished run is reused
(the same config), an interrupted run resumes, a different config is refused with
the keys that changed (``force`` redoes it). Re-running therefore skips finished
folds and continues the unfinished ones.
"""

from __future__ import annotations

import copy
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from hoitool import log
from hoitool.config import lookup, set_dotted
from hoitool.datasets.cad120 import SUBJECT_DIR
from hoitool.datasets.common import prepare_dataset
from hoitool.errors import HoitoolError, UsageError
from hoitool.eval.evaluate import metrics_for_run
from hoitool.eval.report import mean_std
from hoitool.io.atomic import write_json, write_text
from hoitool.io.digest import file_sha256
from hoitool.manifest import Manifest
from hoitool.settings import resolved
from hoitool.settings.training import DistillStageSettings, TeacherSettings
from hoitool.store import open_store
from hoitool.train.loop import TrainRequest, train
from hoitool.train.presets import resolve_training_config

MARKER = ".hoitool-crossval.json"
FORMAT = "hoitool.crossval/1"
RESULTS_JSON = "crossval.json"
RESULTS_CSV = "crossval.csv"
FOLD_RECORD = "fold.json"  # per fold: the digest of the manifest its runs are trained on
MODELS = ("teacher", "student")
METRICS = ("accuracy", "macro_f1")
VIEWS = ("global", "local", "baseline")


@dataclass
class CrossvalRequest:
    """What ``hoitool crossval cad120`` asks for; training settings resolve as for ``distill``."""

    root: Path  # the CAD-120 release (SubjectN_annotations, SubjectN_rgbd_images)
    features: Path  # one features store holding every video
    out: Path
    folds: list[str] | None = None  # test subjects; None: every subject of the release
    val: float = 0.2  # share of the training subjects' videos held out as val (per activity)
    seed: int = 0  # seed of the val split
    teacher_view: str = "global"
    student_view: str = "local"
    preset: str | None = "cad120"
    config_file: Path | None = None
    options: dict = field(default_factory=dict)  # dotted key -> value (None: not given)
    overrides: list[str] = field(default_factory=list)  # --set key=value
    force: bool = False


def training_configs(request: CrossvalRequest) -> tuple[dict, dict]:
    """(teacher, student) configs, validated: one resolution as ``distill``'s, the teacher's without ``distill``."""
    for name, view in (("teacher", request.teacher_view), ("student", request.student_view)):
        if view not in VIEWS:
            raise UsageError(f"--{name}-view must be one of {', '.join(VIEWS)}, got {view!r}")
    student = resolve_training_config(
        True,
        request.preset,
        request.config_file,
        dict(request.options, **{"model.view": request.student_view}),
        request.overrides,
        request.teacher_view,
    )
    student = resolved(DistillStageSettings, student)
    if student["distill"]["dml"]:
        raise UsageError("crossval trains a teacher, then a student from it: distill.dml must be false")
    teacher = copy.deepcopy({key: value for key, value in student.items() if key in TeacherSettings.model_fields})
    set_dotted(teacher, "model.view", request.teacher_view, "--teacher-view")
    return resolved(TeacherSettings, teacher), student


def subjects_of(root: Path) -> list[str]:
    """The subjects of a CAD-120 release, sorted (``Subject1, Subject3, Subject4, Subject5``)."""
    if not root.is_dir():
        raise UsageError(f"{root}: CAD-120 root not found")
    found = sorted(
        match.group(1) for path in root.iterdir() if path.is_dir() and (match := SUBJECT_DIR.match(path.name))
    )
    if len(found) < 2:
        raise UsageError(
            f"{root}: found {len(found)} SubjectN_annotations folder(s); cross-validation needs at least 2"
        )
    return found


def check_out(out: Path) -> bool:
    """Whether ``out`` is already ours; refuse one that is neither new, empty nor a crossval folder hoitool made."""
    marker = out / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("format") == FORMAT:
                return True
        except (OSError, ValueError, AttributeError):
            pass
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"{out}: exists and is not a hoitool crossval folder ({MARKER} missing); choose a new or empty --out"
        )
    return False


def claim_out(out: Path) -> None:
    """Write the marker first (after :func:`check_out`), so the folder is known as ours from then on."""
    if not check_out(out):
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / MARKER, {"format": FORMAT, "dataset": "cad120"})


def check_fold(manifest: Manifest, subject: str, store_ids: set[str], where: Path) -> dict:
    """The fold's split counts, after checking that test is exactly ``subject`` and val/train never hold it."""
    counts = {}
    for split in ("train", "val", "test"):
        videos = manifest.split(split)
        groups = {video.group for video in videos}
        if split == "test" and groups != {subject}:
            raise HoitoolError(
                f"{where}: test split holds subjects {sorted(map(str, groups))}, expected only {subject}"
            )
        if split != "test" and subject in groups:
            raise HoitoolError(f"{where}: {split} split holds videos of the test subject {subject}")
        missing = [video.id for video in videos if video.id not in store_ids]
        if split != "val" and len(missing) == len(videos):
            raise UsageError(f"{where}: none of the {split} videos of fold {subject} are in the features store")
        if missing:
            log.warning(f"fold {subject}: {len(missing)} {split} video(s) not in the features store, e.g. {missing[0]}")
        counts[split] = len(videos) - len(missing)
    if not counts["val"]:
        log.warning(f"fold {subject}: no val videos; best.pt follows the last epoch (raise --val)")
    return counts


def prepare_folds(request: CrossvalRequest, folds: list[str], store_ids: set[str]) -> dict[str, tuple[Path, dict]]:
    """Each fold's prepared manifest (reused when already prepared with these settings) and split counts."""
    prepared = {}
    for subject in folds:
        data = request.out / subject / "data"
        config = {"root": str(Path(request.root).absolute()), "fold": subject, "val": request.val, "seed": request.seed}
        manifest = prepare_dataset("cad120", data, config, force=request.force)
        prepared[subject] = (data / "manifest.json", check_fold(manifest, subject, store_ids, data))
    for subject, (manifest_path, _) in prepared.items():
        pin_splits(request.out / subject, manifest_path)
    return prepared


def pin_splits(fold_dir: Path, manifest_path: Path) -> None:
    """Record the fold's manifest digest once; refuse a fold whose manifest changed under its runs.

    ``data.manifest`` is a runtime key (not part of a run's identity), so a finished
    run would otherwise be reused as it is after ``--force`` re-prepared other splits.
    """
    record = fold_dir / FOLD_RECORD
    digest = file_sha256(manifest_path)
    if not record.is_file():
        write_json(record, {"manifest": str(manifest_path.absolute()), "manifest_sha256": digest})
    elif json.loads(record.read_text(encoding="utf-8")).get("manifest_sha256") != digest:
        raise UsageError(
            f"{fold_dir}: the fold's splits changed since its runs were trained (another --val or --split-seed); "
            "its finished runs would be reused as they are: choose a new --out"
        )


def run_fold(request: CrossvalRequest, subject: str, manifest: Path, configs: tuple[dict, dict]) -> dict:
    """Teacher, then student from it, then both scored on the fold's test subject."""
    runs = {model: request.out / subject / model for model in MODELS}
    manifest_key = str(manifest.absolute())
    teacher, student = (dict(config, data=dict(config["data"], manifest=manifest_key)) for config in configs)
    log.info(f"fold {subject}: teacher ({request.teacher_view}) -> {runs['teacher']}")
    train(TrainRequest("teacher", request.features, runs["teacher"], teacher, force=request.force))
    log.info(
        f"fold {subject}: student ({request.student_view}, from the {request.teacher_view} teacher) -> {runs['student']}"
    )
    train(
        TrainRequest(
            "student", request.features, runs["student"], student, teacher=runs["teacher"], force=request.force
        )
    )
    scores = {}
    for model, run in runs.items():
        record = metrics_for_run(run, "test")
        scores[model] = {metric: record["metrics"].get(metric) for metric in METRICS}
        scores[model]["run"] = str(run)
    return scores


def summarize(folds: list[dict]) -> dict:
    """Mean and sample std (ddof=1) across folds of every model's accuracy and macro-F1."""
    summary: dict[str, dict] = {}
    for model in MODELS:
        summary[model] = {}
        for metric in METRICS:
            values = [fold[model][metric] for fold in folds if fold[model][metric] is not None]
            mean, std = mean_std(values)
            summary[model][metric] = {"mean": mean, "std": None if std != std else std, "n": len(values)}
    return summary


def results_csv(record: dict) -> str:
    """One row per fold and model, then the mean and std rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["fold", "model", "view", "test_videos", *METRICS])
    views = {"teacher": record["teacher_view"], "student": record["student_view"]}
    for fold in record["folds"]:
        for model in MODELS:
            writer.writerow(
                [fold["fold"], model, views[model], fold["videos"]["test"], *(fold[model][m] for m in METRICS)]
            )
    for statistic in ("mean", "std"):
        for model in MODELS:
            row = [record["summary"][model][m][statistic] for m in METRICS]
            writer.writerow([statistic, model, views[model], "", *row])
    return buffer.getvalue()


def crossval(request: CrossvalRequest) -> dict:
    """Run (or resume, or re-read) every fold; write and return the cross-validation record.

    Everything that can be checked is checked before any fold trains: the training
    configs, the features store, the folds, every fold's splits against the store.
    """
    request.out, request.features, request.root = Path(request.out), Path(request.features), Path(request.root)
    if not 0 <= request.val < 1:
        raise UsageError(f"--val must be a fraction in [0, 1), got {request.val}")
    configs = training_configs(request)
    subjects = subjects_of(request.root)
    folds = list(request.folds or subjects)
    unknown = [fold for fold in folds if fold not in subjects]
    if unknown or len(set(folds)) != len(folds):
        raise UsageError(f"--folds {','.join(folds)}: each once, from the subjects found ({', '.join(subjects)})")
    check_out(request.out)
    with open_store(request.features) as reader:  # training opens its own reader
        kind, store_ids, fingerprint = reader.kind, set(reader.video_ids), reader.fingerprint
    if kind != "features":
        raise UsageError(f"{request.features}: is a {kind} store, expected a features store")
    claim_out(request.out)
    prepared = prepare_folds(request, folds, store_ids)
    results = []
    for subject in folds:
        manifest, counts = prepared[subject]
        scores = run_fold(request, subject, manifest, configs)
        results.append({"fold": subject, "test_subject": subject, "videos": counts, **scores})
        log.info(
            f"fold {subject}: student accuracy {_percent(scores['student']['accuracy'])}, "
            f"teacher {_percent(scores['teacher']['accuracy'])}"
        )
    record = {
        "format": FORMAT,
        "dataset": "cad120",
        "root": str(request.root.absolute()),
        "features": str(request.features.absolute()),
        "features_fingerprint": fingerprint,
        "teacher_view": request.teacher_view,
        "student_view": request.student_view,
        "preset": lookup(configs[1], "preset"),
        "val": request.val,
        "seed": request.seed,
        "folds": results,
        "summary": summarize(results),
    }
    write_json(request.out / RESULTS_JSON, record)
    write_text(request.out / RESULTS_CSV, results_csv(record))
    return record


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"
