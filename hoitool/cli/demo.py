"""``hoitool demo``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hoitool.cli.app import app
from hoitool.cli.options import ConfigOption, PrintConfigOption, SetOption, stage_config


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the data, stores, runs and report."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Number of seeds per model (default 3)."),
    videos_per_class: Optional[int] = typer.Option(None, "--videos-per-class", help="Size of the synthetic set."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N."),
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Run the whole pipeline on the synthetic set and print the ablation table (the paper's Table 3 shape)."""
    from hoitool.demo import DEMO_DEFAULTS, run_demo

    options = {"train.seeds": list(range(seeds)) if seeds else None, "data.videos_per_class": videos_per_class,
               "runtime.device": device}
    resolved = stage_config(DEMO_DEFAULTS, config, overrides, print_config, options)
    run_demo(out, resolved)
