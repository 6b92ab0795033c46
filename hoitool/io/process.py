"""Child processes that never outlive their parent.

A DataLoader worker is a forked child: it inherits the store's lock file and keeps
it for as long as it lives. When only the main process is killed (``kill -9 PID``,
the OOM killer), orphaned workers would hold the lock forever and block the re-run.
``die_with_parent`` asks Linux to SIGKILL the worker the moment its parent dies.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1


def die_with_parent(worker_id: int = 0, parent_pid: int | None = None) -> None:
    """Worker init: SIGKILL this process when its parent exits (Linux; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def worker_init(then: Callable[[int], None] | None = None, niceness: int = 0) -> Callable[[int], None]:
    """A picklable ``worker_init_fn`` for DataLoader: die with this process, then run ``then(worker_id)``.

    ``niceness`` > 0 lowers the workers' CPU priority (``os.nice``): a worker that only feeds
    the main process then runs in the gaps of its compute instead of pre-empting it.
    """
    return functools.partial(_init, parent_pid=os.getpid(), then=then, niceness=niceness)


def _init(worker_id: int, parent_pid: int, then: Callable[[int], None] | None, niceness: int = 0) -> None:
    die_with_parent(worker_id, parent_pid)
    if niceness > 0:
        os.nice(niceness)
    # The parent turns Ctrl-C / SIGTERM into hoitool.errors.Interrupted and shuts its workers down; a worker
    # must not raise it too (torch's worker loop catches Exception, not BaseException: a traceback). Ctrl-C
    # reaches the whole process group, so workers ignore it; SIGTERM keeps its default (it ends the worker
    # quietly), since torch's shutdown terminates a worker that does not stop in time.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if then is not None:
        then(worker_id)
