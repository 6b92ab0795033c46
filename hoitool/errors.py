"""Errors a user can cause, each with the exit code the CLI returns for it.

Raise these (never ``SystemExit``) from library code; the CLI turns them into a
one-line message and the exit code below.
"""

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


class Interrupted(HoitoolError):
    """SIGINT/SIGTERM (e.g. SLURM pre-emption); raised instead of KeyboardInterrupt so it reaches main."""

    exit_code = EXIT_INTERRUPTED
