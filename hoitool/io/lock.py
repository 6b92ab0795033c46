"""One writer per output: an exclusive ``flock`` on a lock file, refused (not waited for) when held.

The kernel drops an ``flock`` when its holder dies, so a killed owner never blocks
the next run (forked DataLoader workers share the lock while they live, and die
with their parent: :func:`hoitool.io.process.worker_init`). The lock file itself
stays; it is empty and means nothing once no process holds it.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path
from typing import IO

from hoitool.errors import UsageError


def exclusive_lock(lock_file: Path | str, busy: str, grace_s: float = 0.0) -> IO:
    """Hold ``lock_file`` for as long as the returned handle stays open; ``busy`` is the refusal's message.

    ``grace_s``: keep trying that long before refusing, for the moment it takes the
    children of a just-killed owner to die (a worker forked an instant before the kill).
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_file, "a")
    deadline = time.monotonic() + grace_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except OSError:
            if time.monotonic() >= deadline:
                handle.close()
                raise UsageError(busy) from None
            time.sleep(0.1)


def release(handle: IO) -> None:
    """Unlock and close: ``LOCK_UN`` frees the lock even while forked children still share the open file."""
    try:
        fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()
