"""The ``hoitool`` Typer application and its error handling.

Each stage lives in its own module under ``hoitool/cli/`` and registers itself
on the groups defined here. ``main`` maps errors to exit codes:
0 done, 1 failure, 2 usage, 3 some videos failed, 130 interrupted.
"""

from __future__ import annotations

import signal
import sys
from typing import Optional

import typer
from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer vendors click

from hoitool import __version__
from hoitool.cli import console
from hoitool.errors import HoitoolError, Interrupted, os_error_message

app = typer.Typer(
    name="hoitool",
    help="Human-object interaction context graphs and their distillation (GLIDN), as resumable stages.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # hoitool --install-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode="rich",
)
prepare_app = typer.Typer(help="Prepare a dataset into a manifest.", no_args_is_help=True)
extract_app = typer.Typer(help="Extract boxes and node features into on-disk stores.", no_args_is_help=True)
cache_app = typer.Typer(help="Inspect, verify and merge stores.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")
app.add_typer(extract_app, name="extract")
app.add_typer(cache_app, name="cache")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hoitool {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(
        None, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="More detail."),
) -> None:
    console.set_verbosity(quiet=quiet, verbose=verbose)


def _register_commands() -> None:
    """Import the command modules; each adds its commands to the groups above."""
    import importlib

    for name in (
        "prepare",
        "extract",
        "cache",
        "train",
        "evaluate",
        "report",
        "plot",
        "demo",
        "crossval",
        "text",
        "show",
    ):
        try:
            importlib.import_module(f"hoitool.cli.{name}")
        except ModuleNotFoundError as exc:  # a command group not built yet
            if exc.name != f"hoitool.cli.{name}":
                raise


_register_commands()


def _interrupted(signum, frame) -> None:
    raise Interrupted(
        f"interrupted by {signal.Signals(signum).name}; finished videos and checkpoints are kept, "
        "run the same command again to resume"
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors and scriptable exit codes, never a bare traceback for a user mistake."""
    signal.signal(signal.SIGINT, _interrupted)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        code = app(args=argv, prog_name="hoitool", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # bare `hoitool` or `hoitool prepare`: the help, as typer shows it
        exc.show()
        sys.exit(0)
    except ClickException as exc:  # a bad option value or a missing argument: one line, exit 2
        console.error(f"{exc.format_message()} (see --help)")
        sys.exit(exc.exit_code)
    except (HoitoolError, Interrupted) as exc:
        console.error(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:  # read-only folder, full disk, ...: one line, never a traceback
        error = os_error_message(exc)
        console.error(str(error))
        sys.exit(error.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
