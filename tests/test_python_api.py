"""docs/python-api.md's example (examples/python_api.py) runs as written, without the CLI."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "python_api.py"


@pytest.mark.slow
def test_the_python_api_example_runs(tmp_path, capsys):
    namespace = runpy.run_path(str(EXAMPLE))
    namespace["main"](tmp_path)
    out = capsys.readouterr().out
    assert "nodes (1, 4, 3, 512) float16" in out and "test accuracy" in out
    assert (tmp_path / "runs" / "global" / "eval" / "metrics_test.json").is_file()
    assert "hoitool.cli" not in EXAMPLE.read_text()
