"""``hoitool demo``: the whole pipeline on the rendered synthetic set (library: :mod:`hoitool.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from hoitool.cli import console
from hoitool.cli.app import app
from hoitool.cli.options import ConfigOption, PrintConfigOption, SetOption, stage_config


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the data, stores, runs and report."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of seeds per model (default 2)."),
    videos_per_class: Optional[int] = typer.Option(None, "--videos-per-class", help="Size of the synthetic set."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    config: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Every stage on rendered synthetic videos; prints the report and accuracy per context with intervals."""
    from hoitool.demo import DEMO_DEFAULTS, run_demo

    options = {
        "train.seeds": list(range(seeds)) if seeds else None,
        "data.videos_per_class": videos_per_class,
        "runtime.device": device,
    }
    resolved = stage_config(DEMO_DEFAULTS, config, overrides, print_config, options)
    result = run_demo(out, resolved)
    console.stdout.print(result.tables, markup=False, highlight=False, soft_wrap=True)
