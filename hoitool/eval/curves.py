"""Learning curves of training runs, drawn from their ``metrics.jsonl`` (the source of truth).

One figure, two panels: every loss term (``loss_*``, ``val_loss``) on the left, the
train/val metric on the right; DML peers (``peer_*`` keys) and several runs overlay.
Saved as PNG and PDF (vector, for papers) through matplotlib's Agg canvas.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hoitool.errors import UsageError
from hoitool.io.atomic import atomic_path, read_jsonl

METRICS_FILE = "metrics.jsonl"
FORMATS = ("png", "pdf", "svg")


@dataclass
class Curves:
    """One run's per-epoch series: name -> (epochs, values)."""

    label: str
    series: dict[str, tuple[list[int], list[float]]]
    best_epoch: int | None


def read_curves(run_dir: Path | str) -> Curves:
    """The series of a run directory; refuses a folder without ``metrics.jsonl`` (not a run, or not started)."""
    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise UsageError(f"{path}: missing (is {run_dir} a run directory that has finished an epoch?)")
    records = [record for record in read_jsonl(path) if isinstance(record.get("epoch"), int)]
    if not records:
        raise UsageError(f"{path}: holds no epochs yet")
    series: dict[str, tuple[list[int], list[float]]] = {}
    best_epoch = None
    for record in records:
        epoch = record["epoch"]
        if record.get("best"):
            best_epoch = epoch
        for name, value in record.items():
            if name in ("epoch", "lr", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            epochs, values = series.setdefault(name, ([], []))
            epochs.append(epoch)
            values.append(float(value))
    return Curves(_label(run_dir), series, best_epoch)


def _label(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("label") or run_dir.name)
    except (OSError, ValueError):
        return run_dir.name


def _is_loss(name: str) -> bool:
    base = name.removeprefix("peer_")
    return base.startswith("loss_") or base == "val_loss"


def check_formats(formats: tuple[str, ...]) -> None:
    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise UsageError(f"plot format {unknown[0]!r}: use one of {', '.join(FORMATS)}")


def plot_curves(runs: list[Curves], out: Path | str, formats: tuple[str, ...] = ("png", "pdf")) -> list[Path]:
    """Draw the runs' curves into ``out.<format>`` for each format; returns the files written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_formats(formats)
    figure = Figure(figsize=(12, 4.5))
    losses, metrics = figure.subplots(1, 2)
    for run in runs:
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        for name, (epochs, values) in sorted(run.series.items()):
            axes = losses if _is_loss(name) else metrics
            style = "--" if "val" in name else "-"
            axes.plot(epochs, values, style, label=prefix + name, linewidth=1.2)
        if run.best_epoch is not None:
            metrics.axvline(run.best_epoch, color="grey", linewidth=0.6, linestyle=":")
    for axes, title in ((losses, "loss terms"), (metrics, "metrics (dotted line: best epoch on val)")):
        axes.set_xlabel("epoch")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=7)
    figure.suptitle(", ".join(run.label for run in runs))
    FigureCanvasAgg(figure)
    written = []
    stem = Path(out).with_suffix("") if Path(out).suffix.lstrip(".") in FORMATS else Path(out)
    for name in formats:
        path = stem.with_name(f"{stem.name}.{name}")
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=name, dpi=100, bbox_inches="tight")
        written.append(path)
    return written
