"""Docs true to the code: every ``hoitool ...`` command and ``--option`` written in README.md and docs/ exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from hoitool.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "examples").glob("*.sh"))]


def _commands() -> dict:
    """``{"extract boxes": <command>, ...}`` for every leaf command of the app."""
    root = typer.main.get_command(app)
    found: dict = {}

    def walk(command, path: list[str]) -> None:
        if getattr(command, "commands", None):
            for name, sub in command.commands.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = command

    walk(root, [])
    return found


def _code(text: str, shell: bool) -> list[str]:
    """The code of a document: a shell script whole; of markdown, fenced blocks and inline code spans."""
    if shell:
        return [text]
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return blocks + re.findall(r"`([^`\n]+)`", prose)


def _invocations(text: str, shell: bool = False) -> list[str]:
    """Each ``hoitool ...`` command line in the code of a document (continuations joined, comments dropped)."""
    lines = []
    for code in _code(text, shell):
        code = code.replace("\\\n", " ")
        for line in code.splitlines():
            line = line.split(" #")[0]
            for match in re.finditer(r"(?:^|[\s$(])hoitool((?: [^\n#|;&)]*)?)$", line.strip()):
                lines.append(match.group(1).strip())
    return lines


def _documented() -> list[tuple[str, str]]:
    return [
        (path.name, line)
        for path in DOCS
        for line in _invocations(path.read_text(encoding="utf-8"), shell=path.suffix == ".sh")
    ]


COMMANDS = _commands()
ROOT_OPTIONS = {"--help", "--version", "--quiet", "-q", "--verbose", "-v", "--install-completion", "--show-completion"}


@pytest.mark.parametrize("where, line", _documented())
def test_documented_command_and_options_exist(where, line):
    words = line.split()
    while words and words[0].startswith("-"):  # global options before the command
        assert words.pop(0).split("=")[0] in ROOT_OPTIONS, f"{where}: hoitool {line}"
    if not words or words[0] in ("--help",):
        return
    name = words[0] if words[0] in COMMANDS else " ".join(words[:2])
    if name not in COMMANDS and words[0] in {path.split()[0] for path in COMMANDS}:
        name = " ".join(words[:2])
    if words[0] in ("prepare", "extract", "cache") and len(words) == 1:
        return
    if name not in COMMANDS:
        if any(path.startswith(words[0] + " ") for path in COMMANDS) and (len(words) < 2 or words[1].startswith("<")):
            return  # e.g. "hoitool prepare <dataset>"
    assert name in COMMANDS, f"{where}: no command 'hoitool {name}' (line: hoitool {line})"
    known = {opt for param in COMMANDS[name].params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for word in words:
        if re.fullmatch(r"--[a-z][a-z0-9-]*(=.*)?", word):
            assert word.split("=")[0] in known, (
                f"{where}: 'hoitool {name}' has no option {word.split('=')[0]} (line: hoitool {line})"
            )


def test_the_docs_mention_every_command():
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOCS)
    missing = [name for name in COMMANDS if f"hoitool {name}" not in text]
    assert not missing, f"commands no doc shows: {missing}"
