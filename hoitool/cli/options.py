"""Options shared by every stage command, and the config resolution they drive."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hoitool.cli import console
from hoitool.config import dump_config, resolve_config

ConfigOption = typer.Option(None, "--config", "-c", help="YAML or TOML config file.", exists=False)
SetOption = typer.Option([], "--set", help="Override a config key: --set key.sub=value (repeatable).")
PrintConfigOption = typer.Option(False, "--print-config", help="Print the resolved config and exit.")
ForceOption = typer.Option(False, "--force", help="Accept a changed upstream artifact / overwrite a mismatched output.")
ShardOption = typer.Option(None, "--shard", help="Process the deterministic strided slice i/n of the videos.")


def stage_config(
    defaults: dict | type,
    config_file: Optional[Path],
    overrides: List[str],
    print_config: bool,
    options: dict | None = None,
) -> dict:
    """Resolve a stage's config (validated when ``defaults`` is its settings class); ``--print-config`` prints it and exits 0."""
    config = resolve_config(defaults, config_file, options, overrides)
    if print_config:
        console.stdout.print(dump_config(config), end="", markup=False)
        raise typer.Exit(0)
    return config
