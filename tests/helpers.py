"""Helpers shared by test modules (imported as ``from helpers import run_cli``)."""

import signal

import pytest

from hoitool.cli.app import main


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """The CLI in-process: (exit code, stdout, stderr with rich's wrapping undone); restores the signal handlers main installs."""
    code, out, err = run_cli_raw(argv, capsys)
    return code, out, " ".join(err.split())


def run_cli_raw(argv, capsys) -> tuple[int, str, str]:
    """As :func:`run_cli`, with stderr as printed (to count its lines)."""
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_info:
            main([str(arg) for arg in argv])
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err
