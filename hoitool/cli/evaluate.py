"""``hoitool eval``: metrics of a run's outputs, or of any Charades submission file (a thin shell over
:mod:`hoitool.eval.evaluate`, which ``hoitool report`` shares)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from hoitool.cli import console
from hoitool.cli.app import app
from hoitool.errors import UsageError
from hoitool.eval.charades import CHARADES_CLASSES
from hoitool.eval.evaluate import evaluate_runs, score_submission
from hoitool.runs import EVAL_DIR, load_run

_METRIC_TITLES = {
    "accuracy": "accuracy (top-1)",
    "top5_accuracy": "top-5 accuracy",
    "macro_f1": "macro-F1",
    "map_official": "mAP (official Charades)",
    "wap_official": "wAP (official Charades)",
    "map_sklearn": "mAP (sklearn/PySlowFast style)",
    "object_top1": "object top-1 (dual attention)",
}


def print_metrics(record: dict, out_dir: Path) -> None:
    counts = record["counts"]
    views = counts["views_per_video"]
    view_text = str(views["min"]) if views["min"] == views["max"] else f"{views['min']}-{views['max']}"
    table = Table(
        title=escape(
            f"{record['name']} — {record['split']}: {counts['videos']} videos x {view_text} views, "
            f"fused by {record['fusion']['views']}"
        )
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("%", justify="right")
    for key, value in record["metrics"].items():
        title = _METRIC_TITLES.get(key, key) + (" *" if key == record["main_metric"] else "")
        table.add_row(title, "n/a" if value is None else repr(value), "" if value is None else f"{100 * value:.2f}")
    console.stdout.print(table)
    truth = counts.get("ground_truth")
    if truth and truth.get("path"):
        console.info(
            f"official metric over the {truth['videos']} videos of {truth['path']}: {truth['scored']} scored, "
            f"{truth['missing']} test video(s) with labels had no scores (ranked last, -inf), "
            f"{truth['without_labels']} without labels (never scored, as the official script), "
            f"{truth['ignored']} of the run's videos not in the list (ignored)"
        )
    elif truth:
        console.info(
            f"[yellow]warning:[/yellow] official mAP over the run's own {counts['videos']} videos only, not the full "
            f"test list ({escape(truth['why'])}); pass --gt Charades_v1_test.csv to rank missing videos as the official script does"
        )
    if counts.get("classes_without_positives"):
        console.info(
            f"{counts['classes_without_positives']} classes have no positive video in this split: their official AP is "
            "undefined, so official mAP/wAP are n/a (the sklearn-style mAP drops them)"
        )
    console.info(f"wrote {out_dir / record['files']['metrics']} and the per-class files beside it")


def _format_full(value) -> str:
    return "nan" if value is None else repr(value)


@app.command("eval")
def evaluate(
    run: Optional[Path] = typer.Argument(
        None, metavar="RUN", help="Run directory (run.json + outputs.npz + outputs.json)."
    ),
    split: str = typer.Option("test", "--split", help="Which split's outputs to score."),
    fusion: str = typer.Option("max", "--fusion", help="Fuse a video's views (and --fuse-runs) by max or mean."),
    map_variant: str = typer.Option(
        "official", "--map", help="Main mAP for multi-label runs: official or sklearn (both are written)."
    ),
    fuse_run: list[Path] = typer.Option([], "--fuse-runs", help="Another run to fuse with RUN (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory \\[default: RUN/eval]."),
    submission: Optional[Path] = typer.Option(
        None, "--submission", help="Score this Charades submission file instead of a run."
    ),
    gt: Optional[Path] = typer.Option(
        None,
        "--gt",
        help="Charades ground-truth CSV: for --submission, or the full test list a RUN is ranked against "
        "\\[default for a Charades RUN: the one its manifest records].",
    ),
    classes: Optional[int] = typer.Option(
        None, "--classes", min=1, help=f"Number of classes (with --submission) \\[default: {CHARADES_CLASSES}]."
    ),
    lead_time: list[str] = typer.Option(
        [],
        "--lead-time",
        help="Also score best.pt on inputs cut at this lead time (1.5s or 80%; repeatable), as an anticipation "
        "run's student sees them; writes lead_times_<split>.json.",
    ),
    anticipate_at: Optional[str] = typer.Option(
        None,
        "--anticipate-at",
        help="With --lead-time: where t lies, end (each video's last frame) or events (every annotated event "
        "of every video as a sample, label at t) \\[default: the run's anticipation.at, else end].",
    ),
    attention: list[str] = typer.Option(
        [],
        "--attention",
        metavar="VIDEO",
        help="Also draw this video's attention maps on its frames (a --method dual_attention run; repeatable): "
        "OUT/attention/VIDEO.png.",
    ),
) -> None:
    """Score a run's outputs (views fused per video), or a Charades submission with the official metric."""
    if submission is not None:
        if run is not None or fuse_run:
            raise UsageError("give either RUN or --submission, not both")
        if gt is None:
            raise UsageError("--submission needs --gt (the ground-truth CSV)")
        record = score_submission(submission, gt, classes or CHARADES_CLASSES, out)
        counts = record["counts"]
        console.info(
            f"{counts['matched']} ground-truth videos scored, {counts['missing']} with labels missing from the submission "
            f"(scored -inf), {counts['ignored']} submission ids not in the ground truth (ignored), "
            f"{counts['gt_videos_without_labels']} ground-truth videos without labels (never matched)"
        )
        console.stdout.print(f"mAP {_format_full(record['map'])}", markup=False)
        console.stdout.print(f"wAP {_format_full(record['wap'])}", markup=False)
        if out is not None:
            console.info(f"wrote per-class APs to {out}")
        return
    if run is None:
        raise UsageError("give a RUN directory, or --submission FILE --gt CSV")
    if classes is not None:
        raise UsageError("--classes goes with --submission (a run's classes come from its run.json)")
    runs = [load_run(path) for path in [run, *fuse_run]]
    out_dir = out if out is not None else runs[0].path / EVAL_DIR
    if anticipate_at is not None and not lead_time:
        raise UsageError("--anticipate-at goes with --lead-time (it says where t lies when the input is cut)")
    if lead_time:
        from hoitool.nn.anticipation import parse_lead_time
        from hoitool.train.methods.anticipation import check_lead_time_run
        from hoitool.train.methods.anticipation_events import AT

        for text in lead_time:  # every lead time checked before any work
            parse_lead_time(text)
        if anticipate_at is not None and anticipate_at not in AT:
            raise UsageError(f"--anticipate-at must be one of {', '.join(AT)}, got {anticipate_at!r}")
        check_lead_time_run(runs[0].info, run)
    record = evaluate_runs(runs, split=split, fusion=fusion, map_variant=map_variant, out_dir=out_dir, gt=gt)
    print_metrics(record, out_dir)
    if attention:
        from hoitool.train.methods.dual_attention import attention_maps

        for path in attention_maps(run, attention, out_dir / "attention"):
            console.info(f"wrote {path}")
    if lead_time:
        _print_lead_times(run, lead_time, split, out_dir, anticipate_at)


def _print_lead_times(run: Path, leads: list[str], split: str, out_dir: Path, at: str | None = None) -> None:
    """Accuracy (mAP for multi-label runs) of the run at each lead time (hoitool.train.methods.anticipation)."""
    from hoitool.train.methods.anticipation import evaluate_lead_times

    record = evaluate_lead_times(run, leads, split, out_dir, at=at)
    table = Table(
        title=escape(
            f"{run.name} — {split} at lead times (trained: {record['trained_lead_time']}; t at {record['at']})"
        )
    )
    table.add_column("lead time")
    table.add_column("metric")
    table.add_column("%", justify="right")
    table.add_column("samples", justify="right")
    for lead, values in record["lead_times"].items():
        metric = "accuracy" if "accuracy" in values else "map_sklearn"
        table.add_row(lead, metric, f"{100 * values[metric]:.2f}", str(values["samples"]))
    console.stdout.print(table)
    console.info(f"wrote {out_dir / f'lead_times_{split}.json'}")
