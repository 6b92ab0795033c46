"""The house's floors: the library never imports the CLI, and importing it pulls in no CLI toolkit."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hoitool"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_library_module_imports_the_cli():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent)
        if relative.parts[1] == "cli" or relative.name == "__main__.py":
            continue
        bad = sorted(name for name in _imports(path) if name == "hoitool.cli" or name.startswith("hoitool.cli."))
        if bad:
            offenders.append(f"{relative}: {', '.join(bad)}")
    assert not offenders, "library modules importing the CLI:\n" + "\n".join(offenders)


def test_nn_does_not_import_train():
    """Models sit below training: hoitool/nn may use hoitool.losses, never hoitool.train."""
    offenders = []
    for path in sorted((PACKAGE / "nn").rglob("*.py")):
        bad = sorted(name for name in _imports(path) if name == "hoitool.train" or name.startswith("hoitool.train."))
        if bad:
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {', '.join(bad)}")
    assert not offenders, "nn modules importing hoitool.train:\n" + "\n".join(offenders)


def test_runs_and_resume_sit_below_train_and_eval():
    """The run directory (hoitool.runs) and the resume policy are imported by training, eval, stores and prepare:
    they import none of them (no arrow back up), and no torch (eval and ``hoitool --help`` stay light)."""
    above = ("hoitool.train", "hoitool.eval", "hoitool.store", "hoitool.datasets", "hoitool.cli", "torch")
    offenders = []
    for name in ("runs.py", "resume.py"):
        path = PACKAGE / name
        bad = sorted(i for i in _imports(path) if any(i == top or i.startswith(f"{top}.") for top in above))
        if bad:
            offenders.append(f"{name}: {', '.join(bad)}")
    assert not offenders, "modules importing upward:\n" + "\n".join(offenders)
    code = "import sys, hoitool.runs, hoitool.resume; print(sorted(m for m in ('torch', 'hoitool.train', 'hoitool.eval') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_importing_the_library_does_not_set_up_a_cli():
    """Every library module imported (a notebook's view): no typer, no rich console, no hoitool.cli."""
    modules = sorted(
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
        if "cli" not in path.parts and path.name != "__main__.py"
    )
    code = (
        f"import importlib, sys\nfor name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in ('typer', 'rich.console', 'hoitool.cli') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_help_imports_neither_torch_nor_matplotlib():
    code = (
        "import sys; from hoitool.cli.app import app; "
        "print(sorted(m for m in ('torch', 'matplotlib', 'h5py', 'zarr') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
