"""Errors a user can cause, each with the exit code the CLI returns for it.

Raise these (never ``SystemExit``) from library code; the CLI turns them into a
one-line message and the exit code below.
"""

import errno

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_SOME_VIDEOS_FAILED = 3
EXIT_INTERRUPTED = 130


class HoitoolError(Exception):
    """A failure with a one-line, user-facing explanation."""

    exit_code = EXIT_FAILURE


class UsageError(HoitoolError):
    """Bad arguments, bad config, or an input that cannot be used as given."""

    exit_code = EXIT_USAGE


class StaleArtifactError(HoitoolError):
    """An upstream artifact changed since this stage last read it (override with --force)."""

    exit_code = EXIT_FAILURE


class SomeVideosFailed(HoitoolError):
    """The stage finished, but some videos were recorded as failed."""

    exit_code = EXIT_SOME_VIDEOS_FAILED


class Interrupted(BaseException):
    """SIGINT/SIGTERM (e.g. SLURM pre-emption): the run stops, keeping what is finished; exit 130.

    Not an ``Exception``, so no ``except Exception`` / ``except HoitoolError`` on the way (a video's
    failure record, a store read's "damaged" wrapper) can turn an interrupt into a failure; not a
    ``KeyboardInterrupt`` either, which typer turns into a bare exit 130 without this message.
    """

    exit_code = EXIT_INTERRUPTED


_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def os_error_message(exc: OSError) -> HoitoolError:
    """An ordinary file-system fault as a one-line error (the CLI prints it instead of a traceback).

    Permission problems and read-only folders are the user's to fix (exit 2); a full disk
    or quota is a failure (exit 1) after which re-running resumes from the work kept.
    """
    where = exc.filename or "output"
    if exc.errno in _NO_SPACE:
        return HoitoolError(
            f"{where}: no space left on the device ({exc.strerror}); finished work is kept: "
            "free some space (or pick another output) and run the same command again to resume"
        )
    if exc.errno in _READ_ONLY:
        return UsageError(f"{where}: cannot write here ({exc.strerror}); choose an output folder you can write to")
    first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
    return HoitoolError(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else first_line)
