"""Console output of the CLI: rich on a terminal, plain lines otherwise (logs of cluster jobs).

The library reports through :mod:`hoitool.log` (stdlib logging + a progress hook);
:func:`set_verbosity` routes both here, so library and CLI messages look the same.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape

from hoitool import log

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)
_verbosity = {"level": 1}  # 0 quiet, 1 normal, 2 verbose
_LEVELS = {0: logging.ERROR, 1: logging.INFO, 2: logging.DEBUG}


class _ConsoleHandler(logging.Handler):
    """Library log records printed like the CLI's own messages (library text is plain, never markup)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = escape(record.getMessage())
        if record.levelno >= logging.ERROR:
            stderr.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
        elif record.levelno >= logging.WARNING:
            stderr.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)
        elif record.levelno >= logging.INFO:
            stderr.print(message, soft_wrap=True)
        else:
            stderr.print(f"[dim]{message}[/dim]", soft_wrap=True)


_handler = _ConsoleHandler()


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    """Set the CLI's verbosity and route the library's messages and progress to this console."""
    _verbosity["level"] = 0 if quiet else 2 if verbose else 1
    if _handler not in log.logger.handlers:
        log.logger.addHandler(_handler)  # records still propagate (pytest's caplog, a host's own logging)
    log.logger.setLevel(_LEVELS[_verbosity["level"]])
    log.set_progress_factory(progress)


def info(message: str) -> None:
    if _verbosity["level"] >= 1:
        stderr.print(message, soft_wrap=True)


def debug(message: str) -> None:
    if _verbosity["level"] >= 2:
        stderr.print(f"[dim]{message}[/dim]", soft_wrap=True)


def error(message: str) -> None:
    """One error line; the message is plain text (a path may hold brackets), never markup."""
    stderr.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)


class _RichProgress:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, note: str = "") -> None:
        self.progress.update(self.task, advance=n, note=note)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[log.Progress]:
    """``with progress("features", n) as bar: bar.advance()``: a rich bar on a terminal, log lines in a pipe."""
    if not stderr.is_terminal or _verbosity["level"] == 0:
        yield log.LogProgress(description, total)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}"),
        console=stderr,
        transient=False,
    ) as bar:
        yield _RichProgress(bar, bar.add_task(description, total=total, note=""))
