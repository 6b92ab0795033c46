"""Provenance names the code: the version and, in a git checkout, the commit."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hoitool.extract.common import provenance
from hoitool.io.gitinfo import code_commit

ROOT = Path(__file__).resolve().parents[1]


def test_code_commit_is_the_checkout_head():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not running from a git checkout")
    commit = code_commit()
    assert commit is not None and commit.removesuffix("+dirty") == head.stdout.strip()
    record = provenance("boxes", {}, ROOT / "README.md", {}, {}, None)
    assert record["code_commit"] == commit and record["code_version"]
