"""Console output: rich on a terminal, plain lines otherwise (logs of cluster jobs)."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

from rich.console import Console

stderr = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)
_verbosity = {"level": 1}  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(quiet: bool = False, verbose: bool = False) -> None:
    _verbosity["level"] = 0 if quiet else 2 if verbose else 1


def info(message: str) -> None:
    if _verbosity["level"] >= 1:
        stderr.print(message, soft_wrap=True)


def debug(message: str) -> None:
    if _verbosity["level"] >= 2:
        stderr.print(f"[dim]{message}[/dim]", soft_wrap=True)


def error(message: str) -> None:
    stderr.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)


class _PlainProgress:
    """Progress as log lines, at most one every few seconds."""

    def __init__(self, description: str, total: int | None):
        self.description, self.total, self.done = description, total, 0
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if _verbosity["level"] >= 1 and (now - self.last > 5 or self.done == self.total):
            self.last = now
            total = f"/{self.total}" if self.total else ""
            print(f"{self.description}: {self.done}{total} ({now - self.start:.0f}s) {note}".rstrip(), file=sys.stderr, flush=True)


class _RichProgress:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, note: str = "") -> None:
        self.progress.update(self.task, advance=n, note=note)


@contextmanager
def progress(description: str, total: int | None) -> Iterator:
    """``with progress("features", n) as bar: bar.advance()``."""
    if not stderr.is_terminal or _verbosity["level"] == 0:
        yield _PlainProgress(description, total)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=stderr, transient=False,
    ) as bar:
        yield _RichProgress(bar, bar.add_task(description, total=total, note=""))
