"""Options shared by every stage command, and the config resolution they drive."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from hoitool.cli import console
from hoitool.config import dump_config, resolve_config
from hoitool.settings.base import option_help

ConfigOption = typer.Option(None, "--config", "-c", help="YAML or TOML config file.", exists=False)
SetOption = typer.Option([], "--set", help="Override a config key: --set key.sub=value (repeatable).")
PrintConfigOption = typer.Option(False, "--print-config", help="Print the resolved config and exit.")
ForceOption = typer.Option(False, "--force", help="Accept a changed upstream artifact / overwrite a mismatched output.")
ShardOption = typer.Option(None, "--shard", help="Process the deterministic strided slice i/n of the videos.")


def stage_config(
    defaults: dict | type,
    config_file: Optional[Path],
    overrides: list[str],
    print_config: bool,
    options: dict | None = None,
    schema: type | None = None,
) -> dict:
    """Resolve a stage's config (validated when ``defaults`` is its settings class); ``--print-config`` prints it and exits 0."""
    config = resolve_config(defaults, config_file, options, overrides, schema=schema)
    if print_config:
        console.stdout.print(dump_config(config), end="", markup=False)
        raise typer.Exit(0)
    return config


def setting(schema: type, key: str, *flags: str, **extra: Any) -> Any:
    """A stage option that sets config ``key``: its help and default come from the schema (declared once)."""
    help_text = option_help(schema, key).replace("[", "\\[")  # rich markup would swallow "[config: ...]"
    info = typer.Option(None, *flags, help=help_text, **extra)
    info.config_key = key  # read back by setting_values
    return info


def setting_keys(command: Callable) -> dict[str, str]:
    """``{parameter name: config key}`` of the options a command declared with :func:`setting`."""
    return {
        name: parameter.default.config_key
        for name, parameter in inspect.signature(command).parameters.items()
        if getattr(parameter.default, "config_key", None)
    }


def setting_values(command: Callable, values: dict[str, Any]) -> dict[str, Any]:
    """``{config key: value}`` for a command's :func:`setting` options, from its ``locals()`` (paths made absolute)."""
    return {
        key: str(Path(values[name]).absolute()) if isinstance(values[name], Path) else values[name]
        for name, key in setting_keys(command).items()
    }
