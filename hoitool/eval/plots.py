"""Plots of eval results (PNG, plus PDF and SVG beside it), drawn with matplotlib's Agg canvas.

Figures are built with ``matplotlib.figure.Figure`` and saved through the Agg
canvas directly, so no global pyplot backend is switched and nothing needs a display.
PNG is for a quick look, PDF and SVG (vector) for papers and slides.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hoitool.io.atomic import atomic_path

_MAX_LABELLED_CLASSES = 60  # beyond this, tick labels overlap into a black smear
_MAX_ANNOTATED_CLASSES = 20  # beyond this, cell counts are unreadable


FORMATS = ("png", "pdf", "svg")  # every plot is written in each, same stem
# No creation date in the vector files, so the same eval writes the same bytes.
_METADATA = {"png": None, "pdf": {"CreationDate": None}, "svg": {"Date": None}}


def plot_paths(path: Path | str) -> list[Path]:
    """The files a plot named ``path`` (its PNG) is written to: one per format, same stem."""
    return [Path(path).with_suffix(f".{fmt}") for fmt in FORMATS]


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    for fmt, target in zip(FORMATS, plot_paths(path), strict=True):
        with atomic_path(target) as tmp:
            figure.savefig(tmp, format=fmt, dpi=100, bbox_inches="tight", metadata=_METADATA[fmt])


def plot_confusion_matrix(confusion: np.ndarray, class_names: list[str], path: Path | str, title: str) -> None:
    """Rows true, columns predicted; colour is the row-normalised rate (recall on the diagonal), text the count."""
    confusion = np.asarray(confusion)
    n = confusion.shape[0]
    support = confusion.sum(axis=1, keepdims=True)
    rates = np.divide(confusion, support, out=np.zeros(confusion.shape), where=support > 0)
    side = float(min(40.0, max(6.0, 0.4 * n + 3)))
    figure = Figure(figsize=(side, side))
    axes = figure.add_subplot()
    image = axes.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= _MAX_LABELLED_CLASSES:
        axes.set_xticks(range(n), class_names, rotation=90)
        axes.set_yticks(range(n), class_names)
    if n <= _MAX_ANNOTATED_CLASSES:
        for row in range(n):
            for col in range(n):
                if confusion[row, col]:
                    colour = "white" if rates[row, col] > 0.5 else "black"
                    axes.text(col, row, str(confusion[row, col]), ha="center", va="center", color=colour, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    _save(figure, Path(path))


def plot_per_class_ap(ap: np.ndarray, class_names: list[str], path: Path | str, title: str) -> None:
    """Bar chart of per-class AP, classes sorted by AP (NaN = no positives, left out)."""
    ap = np.asarray(ap, dtype=np.float64)
    kept = np.flatnonzero(~np.isnan(ap))
    order = kept[np.argsort(-ap[kept], kind="stable")]
    height = float(min(60.0, max(4.0, 0.18 * len(order) + 1)))
    figure = Figure(figsize=(8, height))
    axes = figure.add_subplot()
    axes.barh(range(len(order)), ap[order], color="tab:blue")
    axes.set_yticks(range(len(order)), [class_names[i] for i in order], fontsize=6 if len(order) > 40 else 9)
    axes.invert_yaxis()
    axes.set_xlim(0.0, 1.0)
    axes.set_xlabel("average precision")
    axes.set_title(title)
    _save(figure, Path(path))
