"""``hoitool report``: one table over many runs (mean ± std across seeds), as markdown, CSV and on the terminal.

Each run's ``eval/metrics_<split>.json`` is used when it matches the run's
current ``outputs.npz``; a run never evaluated, or whose outputs changed since,
is evaluated now by the same code as ``hoitool eval`` (and its metrics written).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from hoitool.cli import console
from hoitool.cli.app import app
from hoitool.errors import UsageError
from hoitool.eval.evaluate import metrics_for_run
from hoitool.eval.report import (
    REPORT_METRICS,
    build_rows,
    check_run,
    footnotes,
    numeric_columns,
    render_csv,
    render_markdown,
    runs_table,
    table_cells,
)
from hoitool.io.atomic import write_text
from hoitool.runs import read_run_info


@app.command("report")
def report(
    runs: list[Path] = typer.Argument(..., metavar="RUN", help="Run directories (several seeds of each method)."),
    out: Path = typer.Option(..., "--out", help="Directory for report.md and report.csv."),
    split: str = typer.Option("test", "--split", help="Which split's metrics to report."),
    metric: str = typer.Option(
        "auto", "--metric", help=f"Main metric: {', '.join(REPORT_METRICS)} (auto: accuracy or official mAP)."
    ),
) -> None:
    """Summarise runs grouped by method: mean ± std across seeds, n per row."""
    if metric not in REPORT_METRICS:
        raise UsageError(f"--metric {metric!r}: choose from {', '.join(REPORT_METRICS)}")
    seen: set[Path] = set()
    entries, checks = [], []
    for run_dir in runs:
        resolved = run_dir.resolve()
        if resolved in seen:
            raise UsageError(f"{run_dir}: given twice")
        seen.add(resolved)
        info = read_run_info(run_dir)
        record = metrics_for_run(run_dir, split)
        entries.append((info, record))
        checks.append(check_run(run_dir, split, record))  # train accuracy, best epoch, stuck at chance
    rows = build_rows(entries, metric, checks)
    markdown = render_markdown(rows, split)
    write_text(out / "report.md", markdown)
    write_text(out / "report.csv", render_csv(rows))
    if console.stdout.is_terminal:
        _print_table(f"{len(entries)} runs, split {split}", *table_cells(rows))
        for note in footnotes(rows):
            console.stdout.print(escape(note), soft_wrap=True)
        _print_table("Runs", *runs_table(rows, split))
    else:  # logs and pipes: the markdown table, unwrapped
        console.stdout.print(markdown, end="", markup=False, highlight=False, soft_wrap=True)
    console.info(f"wrote {out / 'report.md'} and {out / 'report.csv'}")


def _print_table(title: str, header: list[str], cells: list[list[str]]) -> None:
    table = Table(title=escape(title))
    for column, is_number in zip(header, numeric_columns(header), strict=False):
        table.add_column(escape(column), justify="right" if is_number else "left")
    for line in cells:
        table.add_row(*(escape(cell) for cell in line))
    console.stdout.print(table)
