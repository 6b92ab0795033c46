"""``hoitool plot RUN... --out FILE``: learning curves of runs (loss terms, train/val metrics) to PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import typer

from hoitool.cli import console
from hoitool.cli.app import app


@app.command("plot")
def plot_command(
    runs: list[Path] = typer.Argument(..., help="Run directories (from train-teacher / distill)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output file stem: writes OUT.png and OUT.pdf (or the --format list)."
    ),
    formats: list[str] = typer.Option(["png", "pdf"], "--format", help="png, pdf or svg (repeatable)."),
) -> None:
    """Draw learning curves from each run's metrics.jsonl: loss terms left, train/val metric right."""
    from hoitool.eval.curves import check_formats, plot_curves, read_curves

    check_formats(tuple(formats))
    curves = [read_curves(run) for run in runs]
    for path in plot_curves(curves, out, tuple(formats)):
        console.info(f"wrote {path}")
