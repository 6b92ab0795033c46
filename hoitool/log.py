"""Messages and progress from the library: stdlib ``logging`` plus a progress hook.

The library never prints and never imports the CLI. It logs to the ``hoitool`` logger
and reports progress through :func:`progress`; the front end decides how both look.
The CLI (its ``console`` module) shows rich output on a terminal and plain lines in a
pipe; in a notebook, ``logging.basicConfig(level=logging.INFO)`` shows the same lines.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

logger = logging.getLogger("hoitool")


def info(message: str) -> None:
    logger.info(message)


def debug(message: str) -> None:
    logger.debug(message)


def warning(message: str) -> None:
    logger.warning(message)


class Progress(Protocol):
    """What a long loop reports: ``bar.advance(n, note)``."""

    def advance(self, n: int = 1, note: str = "") -> None: ...


ProgressFactory = Callable[[str, "int | None"], AbstractContextManager[Progress]]


class LogProgress:
    """Progress as ``info`` lines, at most one every ``interval`` seconds (and the last one): readable in job logs."""

    def __init__(self, description: str, total: int | None, interval: float = 5.0):
        self.description, self.total, self.done, self.interval = description, total, 0, interval
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1, note: str = "") -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last > self.interval or self.done == self.total:
            self.last = now
            total = f"/{self.total}" if self.total else ""
            info(f"{self.description}: {self.done}{total} ({now - self.start:.0f}s) {note}".rstrip())


@contextmanager
def log_progress(description: str, total: int | None) -> Iterator[Progress]:
    yield LogProgress(description, total)


_factory: list[ProgressFactory] = [log_progress]


def set_progress_factory(factory: ProgressFactory | None) -> None:
    """Install how progress is shown (``None``: back to log lines)."""
    _factory[0] = factory or log_progress


def progress_factory() -> ProgressFactory:
    """The installed progress factory (a caller that installs another for a while restores this one)."""
    return _factory[0]


def progress(description: str, total: int | None) -> AbstractContextManager[Progress]:
    """``with progress("features", n) as bar: bar.advance()``."""
    return _factory[0](description, total)
