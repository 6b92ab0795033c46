"""The evaluation pipeline: fuse a run's views (and runs), compute every metric of its task, write the eval files.

``hoitool eval`` and ``hoitool report`` both call :func:`evaluate_runs`, so a number in
a report is always the number eval writes. Charades submissions are scored by
:func:`score_submission` with the same official implementation (hoitool.eval.charades).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np

from hoitool import log
from hoitool.errors import UsageError
from hoitool.eval import metrics as M
from hoitool.eval.charades import (
    charades_map,
    official_scores,
    read_charades_gt,
    read_submission,
    write_submission,
)
from hoitool.eval.fusion import FUSION_RULES, fuse_runs, fuse_views, probabilities
from hoitool.eval.ground_truth import (
    check_run_against_ground_truth,
    find_ground_truth,
    needs_ground_truth,
)
from hoitool.io.atomic import write_json, write_text
from hoitool.io.digest import file_sha256
from hoitool.runs import EVAL_DIR, OUTPUTS_NPZ, Run, load_run

METRICS_SCHEMA = 1
MAP_VARIANTS = ("official", "sklearn")


def metrics_filename(split: str, tag: str = "") -> str:
    return f"metrics_{split}{tag}.json"


def _finite_or_none(value):
    """JSON has no NaN: an undefined metric is written as null."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _csv_text(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _fusion_tag(runs: list[Run], rule: str) -> str:
    """A file-name tag naming a multi-run fusion: the rule and a hash of the runs' paths."""
    if len(runs) == 1:
        return ""
    digest = hashlib.sha1("\n".join(sorted(str(r.path.resolve()) for r in runs)).encode()).hexdigest()[:8]
    return f"_fused-{rule}-{digest}"


def _check_compatible(runs: list[Run]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.multilabel != first.multilabel or run.classes != first.classes:
            raise UsageError(f"{run.path}: classes or task differ from {first.path}; cannot fuse")


def _single_label_metrics(
    scores, targets, classes, out_dir: Path, split: str, tag: str, title: str
) -> tuple[dict, dict]:
    labels = targets.argmax(axis=1)
    predictions = scores.argmax(axis=1)
    confusion = M.confusion_matrix(labels, predictions, len(classes))
    prf = M.per_class_prf(confusion)
    values = {
        "accuracy": M.accuracy(scores, labels),
        "top5_accuracy": M.top_k_accuracy(scores, labels, 5) if len(classes) > 5 else None,
        "macro_f1": M.macro_f1(confusion),
    }
    files = {
        "per_class": f"per_class_{split}{tag}.csv",
        "confusion_csv": f"confusion_{split}{tag}.csv",
        "confusion_png": f"confusion_{split}{tag}.png",
        "confusion_pdf": f"confusion_{split}{tag}.pdf",
        "confusion_svg": f"confusion_{split}{tag}.svg",
    }
    rows = [
        [i, name, *(repr(float(prf[key][i])) for key in ("precision", "recall", "f1")), int(prf["support"][i])]
        for i, name in enumerate(classes)
    ]
    header = ["class_index", "class", "precision", "recall", "f1", "support"]
    write_text(out_dir / files["per_class"], _csv_text(header, rows))
    write_text(
        out_dir / files["confusion_csv"],
        _csv_text(["true \\ predicted"] + classes, [[name] + confusion[i].tolist() for i, name in enumerate(classes)]),
    )
    from hoitool.eval.plots import plot_confusion_matrix  # matplotlib only when plotting

    plot_confusion_matrix(
        confusion, classes, out_dir / files["confusion_png"], f"{title} accuracy {values['accuracy']:.3f}"
    )
    return values, files


def _multi_label_metrics(
    ids, scores, targets, classes, out_dir: Path, split: str, tag: str, title: str, gt_path: Path | None = None
) -> tuple[dict, dict, dict]:
    counts: dict = {}
    if gt_path is not None:  # the official rule: the full ground-truth list, unscored videos at -inf
        gt = read_charades_gt(gt_path, len(classes))
        check_run_against_ground_truth(ids, targets, gt, gt_path)
        official_map, official_wap, official_ap, aligned = official_scores(ids, scores, gt)
        positives = gt.labels.sum(axis=0)
        counts["ground_truth"] = {
            "path": str(gt_path),
            "videos": len(gt.ids),
            "without_labels": int((~gt.labels.any(axis=1)).sum()),
            "scored": aligned.matched,
            "missing": aligned.missing,
            "ignored": aligned.ignored,
        }
    else:
        official_map, official_wap, official_ap = charades_map(scores, targets)
        positives = (targets > 0).sum(axis=0)
    sklearn_map, sklearn_ap = M.sklearn_style_map(scores, targets)
    values = {"map_official": official_map, "wap_official": official_wap, "map_sklearn": sklearn_map}
    files = {
        "per_class_ap": f"per_class_ap_{split}{tag}.csv",
        "per_class_ap_png": f"per_class_ap_{split}{tag}.png",
        "per_class_ap_pdf": f"per_class_ap_{split}{tag}.pdf",
        "per_class_ap_svg": f"per_class_ap_{split}{tag}.svg",
        "submission": f"submission_{split}{tag}.txt",
    }
    rows = [
        [i, name, repr(float(official_ap[i])), repr(float(sklearn_ap[i])), int(positives[i])]
        for i, name in enumerate(classes)
    ]
    header = ["class_index", "class", "ap_official", "ap_sklearn", "positives"]
    write_text(out_dir / files["per_class_ap"], _csv_text(header, rows))
    from hoitool.eval.plots import plot_per_class_ap

    plot_per_class_ap(
        official_ap, classes, out_dir / files["per_class_ap_png"], f"{title} official mAP {official_map:.3f}"
    )
    write_submission(out_dir / files["submission"], ids, scores)
    counts.update(
        {
            "classes_without_positives": int((positives == 0).sum()),
            "videos_without_labels": int((~(targets > 0).any(axis=1)).sum()),
        }
    )
    return values, files, counts


def _ground_truth_for(run: Run, split: str, gt: Path | None) -> tuple[Path | None, str]:
    """The ground-truth CSV to score ``run`` against: ``--gt``, else the one its manifest records."""
    if gt is not None:
        if not run.multilabel:
            raise UsageError(
                f"--gt: {run.path} is a single-label run; a Charades ground truth applies to multi-label runs"
            )
        if not Path(gt).is_file():
            raise UsageError(f"{gt}: ground-truth CSV not found")
        return Path(gt), ""
    if not (run.multilabel and needs_ground_truth(run.info, split)):
        return None, ""
    return find_ground_truth(run.info, split)


def _object_metrics(run: Run, split: str, fusion: str) -> dict:
    """Object top-1 of a run that predicts objects (``--method dual_attention``); views fused as the actions are.

    Per slot, softmax over the object classes and the null label, fused per video by the same rule;
    top-1 over the slots that name a real object (:func:`hoitool.nn.dual_attention.object_top1`).
    """
    if "object_logits" not in run.extra:
        return {}
    from hoitool.nn.dual_attention import object_top1

    rows = run.rows(split)
    logits = run.extra["object_logits"][rows].astype(np.float64)
    shape = logits.shape
    flat = probabilities(logits.reshape(-1, shape[-1]), False).reshape(len(rows), -1)
    _, fused, targets, _ = fuse_views(run.video_ids[rows], flat, run.extra["object_targets"][rows], fusion)
    return {"object_top1": object_top1(fused.reshape(-1, *shape[1:]), targets)}


def evaluate_runs(
    runs: list[Run],
    split: str = "test",
    fusion: str = "max",
    map_variant: str = "official",
    out_dir: Path | None = None,
    gt: Path | None = None,
) -> dict:
    """Fuse views (and runs), compute every metric of the task, write the eval files; return the metrics record.

    A Charades test split is scored against the full ground-truth list (``gt``, or
    the one the run's manifest records), so videos without outputs count as the
    official script counts them; where no list is found the record says so.
    """
    if fusion not in FUSION_RULES:
        raise UsageError(f"--fusion {fusion!r}: choose from {', '.join(FUSION_RULES)}")
    if map_variant not in MAP_VARIANTS:
        raise UsageError(f"--map {map_variant!r}: choose from {', '.join(MAP_VARIANTS)}")
    _check_compatible(runs)
    primary = runs[0]
    gt_path, gt_missing = _ground_truth_for(primary, split, gt)
    out_dir = Path(out_dir) if out_dir is not None else primary.path / EVAL_DIR
    per_run, views = [], []
    for run in runs:
        rows = run.rows(split)
        ids, scores, targets, counts = fuse_views(
            run.video_ids[rows], probabilities(run.logits[rows], run.multilabel), run.targets[rows], fusion
        )
        per_run.append((ids, scores, targets))
        views.append(counts)
    ids, scores, targets = fuse_runs(per_run, [str(r.path) for r in runs], fusion) if len(runs) > 1 else per_run[0]
    tag = _fusion_tag(runs, fusion)
    name = primary.path.name if len(runs) == 1 else f"fused({fusion}): " + " + ".join(r.path.name for r in runs)
    title = f"{name} [{split}]"
    classes = primary.classes
    all_views = np.concatenate(views)
    counts = {
        "rows": int(sum(len(r.rows(split)) for r in runs)),
        "videos": int(len(ids)),
        "classes": len(classes),
        "views_per_video": {"min": int(all_views.min()), "max": int(all_views.max())},
    }
    if primary.multilabel:
        values, files, extra = _multi_label_metrics(ids, scores, targets, classes, out_dir, split, tag, title, gt_path)
        counts.update(extra)
        if gt_missing:
            counts["ground_truth"] = {"path": None, "why": gt_missing}
        main_metric = "map_official" if map_variant == "official" else "map_sklearn"
    else:
        values, files = _single_label_metrics(scores, targets, classes, out_dir, split, tag, title)
        main_metric = "accuracy"
    if len(runs) == 1:  # fused runs: the action scores only
        values.update(_object_metrics(primary, split, fusion))
    files["metrics"] = metrics_filename(split, tag)
    record = {
        "schema": METRICS_SCHEMA,
        "name": name,
        "run": str(primary.path.resolve()),
        "split": split,
        "task": "multi-label" if primary.multilabel else "single-label",
        "main_metric": main_metric,
        "metrics": {key: _finite_or_none(value) for key, value in values.items()},
        "fusion": {
            "views": fusion,
            "runs": fusion if len(runs) > 1 else None,
            "scores": "sigmoid" if primary.multilabel else "softmax",
        },
        "counts": counts,
        "run_info": primary.info,
        "provenance": primary.provenance,
        "outputs_sha256": primary.outputs_sha256,
        "fused_runs": [
            {
                "run": str(r.path.resolve()),
                "run_info": r.info,
                "provenance": r.provenance,
                "outputs_sha256": r.outputs_sha256,
            }
            for r in runs[1:]
        ],
        "files": files,
    }
    write_json(out_dir / files["metrics"], record)
    return record


def score_submission(submission: Path, gt_path: Path, num_classes: int, out_dir: Path | None) -> dict:
    """Official Charades mAP/wAP of a submission file against a ground-truth CSV."""
    gt = read_charades_gt(gt_path, num_classes)
    ids, scores = read_submission(submission, num_classes)
    mean_ap, weighted_ap, ap, aligned = official_scores(ids, scores, gt)
    positives = gt.labels.sum(axis=0)
    record = {
        "submission": str(submission),
        "gt": str(gt_path),
        "classes": num_classes,
        "map": _finite_or_none(mean_ap),
        "wap": _finite_or_none(weighted_ap),
        "ap_per_class": [_finite_or_none(float(v)) for v in ap],
        "counts": {
            "gt_videos": len(gt.ids),
            "gt_videos_without_labels": int((~gt.labels.any(axis=1)).sum()),
            "matched": aligned.matched,
            "missing": aligned.missing,
            "ignored": aligned.ignored,
        },
    }
    if out_dir is not None:
        stem = Path(submission).stem
        write_json(out_dir / f"{stem}_map.json", record)
        rows = [[c, f"c{c:03d}", repr(float(ap[c])), int(positives[c])] for c in range(num_classes)]
        write_text(out_dir / f"{stem}_ap.csv", _csv_text(["class_index", "class", "ap_official", "positives"], rows))
    return record


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict):
        raise UsageError(f"{path}: not an eval metrics file (no 'metrics' object)")
    return record


def metrics_for_run(run_dir: Path, split: str) -> dict:
    """The run's metrics record for ``split``: the stored one if still current, else freshly evaluated."""
    metrics_path = run_dir / EVAL_DIR / metrics_filename(split)
    outputs = run_dir / OUTPUTS_NPZ
    fusion, map_variant = "max", "official"
    if metrics_path.is_file():
        record = _read_record(metrics_path)
        if not outputs.is_file():
            log.info(f"{run_dir}: {OUTPUTS_NPZ} is gone; using {metrics_path} as recorded")
            return record
        if record.get("outputs_sha256") == file_sha256(outputs):
            return record
        fusion = record.get("fusion", {}).get("views", fusion)
        map_variant = "sklearn" if record.get("main_metric") == "map_sklearn" else map_variant
        log.info(f"{run_dir}: outputs changed since {metrics_path} was written; evaluating again")
    else:
        log.info(f"{run_dir}: not evaluated on {split!r} yet; evaluating (views fused by {fusion})")
    run = load_run(run_dir)
    return evaluate_runs([run], split=split, fusion=fusion, map_variant=map_variant, out_dir=run_dir / EVAL_DIR)
