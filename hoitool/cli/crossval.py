"""``hoitool crossval cad120``: CAD-120's leave-one-subject-out folds in one command (a thin shell over :mod:`hoitool.crossval`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from hoitool.cli import console
from hoitool.cli.app import app
from hoitool.cli.options import ConfigOption, ForceOption, SetOption, setting, setting_values
from hoitool.settings.training import DistillStageSettings as S

crossval_app = typer.Typer(
    help="Cross-validation: every fold through train-teacher, distill and eval.", no_args_is_help=True
)
app.add_typer(crossval_app, name="crossval")


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _mean_std(entry: dict) -> str:
    if entry["mean"] != entry["mean"]:  # NaN: no fold had a value
        return "n/a"
    return _cell(entry["mean"]) + ("" if entry["std"] is None else f" ± {100 * entry['std']:.2f}")


def print_results(record: dict, out: Path) -> None:
    """Per fold and model: accuracy and macro-F1 (%), then mean ± std (sample std across folds)."""
    views = {"teacher": record["teacher_view"], "student": record["student_view"]}
    table = Table(title=escape(f"CAD-120 leave-one-subject-out, {len(record['folds'])} folds (test split, %)"))
    for column in ("fold", "test videos"):
        table.add_column(column)
    for model in ("teacher", "student"):
        table.add_column(f"{model} ({views[model]}) acc", justify="right")
        table.add_column(f"{model} macro-F1", justify="right")
    for fold in record["folds"]:
        cells = [_cell(fold[model][metric]) for model in ("teacher", "student") for metric in ("accuracy", "macro_f1")]
        table.add_row(fold["fold"], str(fold["videos"]["test"]), *cells)
    summary = record["summary"]
    cells = [
        _mean_std(summary[model][metric]) for model in ("teacher", "student") for metric in ("accuracy", "macro_f1")
    ]
    table.add_row("mean ± std", "", *cells)
    console.stdout.print(table)
    console.info(f"wrote {out / 'crossval.json'} and {out / 'crossval.csv'}")


@crossval_app.command("cad120")
def cad120_command(
    root: Path = typer.Option(
        ..., "--root", help="CAD-120 release folder (SubjectN_annotations, SubjectN_rgbd_images)."
    ),
    features: Path = typer.Option(
        ..., "--features", help="Features store of every CAD-120 video (one extraction serves every fold)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Cross-validation folder: new, empty, or one this command made (re-running resumes)."
    ),
    folds: Optional[str] = typer.Option(
        None,
        "--folds",
        help="Test subjects, comma-separated \\[default: every subject: Subject1,Subject3,Subject4,Subject5].",
    ),
    val: float = typer.Option(
        0.2,
        "--val",
        help="Share of the training subjects' videos held out as val, per activity (never the test subject).",
    ),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the val split."),
    teacher_view: str = typer.Option("global", "--teacher-view", help="The teacher's context graph."),
    student_view: str = typer.Option("local", "--student-view", help="The student's context graph."),
    preset: Optional[str] = typer.Option(
        "cad120", "--preset", help="Named training recipe (docs/training.md); 'none' for hoitool's defaults."
    ),
    seed: Optional[int] = setting(S, "train.seed", "--seed"),
    epochs: Optional[int] = setting(S, "train.epochs", "--epochs"),
    lr: Optional[float] = setting(S, "optim.lr", "--lr"),
    batch_size: Optional[int] = setting(S, "train.batch_size", "--batch-size"),
    device: Optional[str] = setting(S, "runtime.device", "--device"),
    workers: Optional[int] = setting(S, "data.workers", "--workers"),
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
) -> None:
    """CAD-120's leave-one-subject-out folds: per fold prepare, train-teacher, distill, eval; mean ± std across folds."""
    from hoitool.crossval import CrossvalRequest, crossval

    request = CrossvalRequest(
        root=root,
        features=features,
        out=out,
        folds=[name.strip() for name in folds.split(",") if name.strip()] if folds else None,
        val=val,
        seed=split_seed,
        teacher_view=teacher_view,
        student_view=student_view,
        preset=None if preset in (None, "none") else preset,
        config_file=config,
        options=setting_values(cad120_command, locals()),
        overrides=list(overrides),
        force=force,
    )
    print_results(crossval(request), out)
