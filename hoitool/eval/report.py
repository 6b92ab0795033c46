"""Cross-seed summary of evaluated runs: one row per method, mean ± std and n (the paper's tables).

Input per run: its ``run.json`` and its eval metrics record. Runs are grouped
by (dataset, label); the label comes from ``run.json`` (its ``label`` wins).

The report guards itself (:func:`check_run`): each run's train accuracy and best
epoch stand beside its test score in a runs table, and a single-label run stuck
at chance (chance inside the bootstrap interval of its test accuracy, or of its
train accuracy) is marked in its row (:data:`AT_CHANCE_MARK`) and named in a
footnote, never averaged in silently.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hoitool.errors import UsageError
from hoitool.eval.fusion import fuse_views, probabilities
from hoitool.eval.stats import Interval, at_chance, bootstrap_mean, chance_level

REPORT_METRICS = (
    "auto",
    "accuracy",
    "top5_accuracy",
    "macro_f1",
    "map_official",
    "wap_official",
    "map_sklearn",
    "object_top1",
)
METRIC_NAMES = {
    "accuracy": "Accuracy",
    "top5_accuracy": "Top-5 accuracy",
    "macro_f1": "macro-F1",
    "map_official": "mAP (official)",
    "wap_official": "wAP (official)",
    "map_sklearn": "mAP (sklearn-style)",
    "object_top1": "Object top-1",
}
# Shown beside the main metric when some run of the report predicts objects (--method dual_attention).
EXTRA_METRICS = ("top5_accuracy", "object_top1")
AT_CHANCE_MARK = "‡"


@dataclass
class RunCheck:
    """What the runs table shows of one run, and whether it is stuck at chance (single-label runs)."""

    run: str
    best_epoch: int | None = None
    test: Interval | None = None  # accuracy on the report's split, with its bootstrap interval
    train_accuracy: float | None = None
    chance: float | None = None  # the best constant guess on the report's split
    stuck: str = ""  # why the run counts as stuck at chance ("" when it does not)


def _correct(run, split: str, fusion: str) -> np.ndarray | None:
    """Per video of ``split``, whether the view-fused top class is the label (None: no outputs for it)."""
    rows = np.flatnonzero(run.split == split)
    if not rows.size:
        return None
    _, scores, targets, _ = fuse_views(
        run.video_ids[rows], probabilities(run.logits[rows], False), run.targets[rows], fusion
    )
    return scores.argmax(1) == targets.argmax(1)


def check_run(run_dir: Path | str, split: str, record: dict) -> RunCheck:
    """Best epoch, train accuracy and the chance test of one run (``record``: its metrics on ``split``)."""
    from hoitool.runs import load_run  # the outputs are read only when a report is made

    best = ((record.get("provenance") or {}).get("checkpoint") or {}).get("epoch")
    check = RunCheck(run=str(run_dir), best_epoch=best)
    if record.get("task") == "multi-label" or not Path(run_dir, "outputs.npz").is_file():
        return check  # chance of an mAP is not a constant guess; no outputs: the recorded metrics only
    run = load_run(run_dir)
    fusion = (record.get("fusion") or {}).get("views") or "max"
    test, train = _correct(run, split, fusion), _correct(run, "train", fusion)
    if test is None:
        return check
    labels = run.targets[run.split == split].argmax(1)
    check.chance = chance_level(labels, len(run.classes))
    check.test = bootstrap_mean(test)
    check.train_accuracy = None if train is None else float(train.mean())
    reasons = []
    if at_chance(test, check.chance):
        reasons.append(f"chance within the interval of its {split} accuracy")
    if train is not None and at_chance(train, check.chance):
        reasons.append("train accuracy at chance")
    check.stuck = " and ".join(reasons)
    return check


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def run_label(info: dict) -> str:
    """A method name from ``run.json``, e.g. ``global``, ``global->local (kd T=10 λ2=0.7)``, ``DML local``.

    λ1 is shown only where it is not 1 − λ2 (the paper's second regime, λ1 = 1, λ2 = 4). A run of
    another training method than GLIDN's (``run.json``'s ``method``) always names it.
    """
    label = _glidn_label(info)
    method = (info.get("method") or {}).get("name", "glidn")
    return label if method == "glidn" or method in label else f"{label} [{method}]"


def _glidn_label(info: dict) -> str:
    if info.get("label"):
        return str(info["label"])
    kind, view = info.get("kind"), info.get("view") or "?"
    if kind == "student":
        distill = info.get("distill") or {}
        parts = [str(distill.get("loss", "?"))]
        if "T" in distill:
            parts.append(f"T={_number(distill['T'])}")
        lambda1, lambda2 = distill.get("lambda1"), distill.get("lambda2")
        if isinstance(lambda1, (int, float)) and not (
            isinstance(lambda2, (int, float)) and math.isclose(lambda1, 1 - lambda2, abs_tol=1e-9)
        ):
            parts.append(f"λ1={_number(lambda1)}")
        if lambda2 is not None:
            parts.append(f"λ2={_number(lambda2)}")
        return f"{info.get('teacher_view') or '?'}->{view} ({' '.join(parts)})"
    if kind == "dml":
        return f"DML {view}"
    return str(view)


def main_metric_name(record: dict, requested: str) -> str:
    """``auto``: accuracy for single-label, the main mAP eval chose (official by default) for multi-label."""
    if requested not in REPORT_METRICS:
        raise UsageError(f"--metric {requested!r}: choose from {', '.join(REPORT_METRICS)}")
    if requested != "auto":
        return requested
    return record.get("main_metric") or ("map_official" if record.get("task") == "multi-label" else "accuracy")


@dataclass
class ReportRow:
    dataset: str
    method: str
    metric: str
    values: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    seeds: list = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    fusions: list[str] = field(default_factory=list)
    missing: int = 0  # runs in the group for which the metric is undefined (null)
    extras: dict[str, list[float]] = field(default_factory=dict)  # EXTRA_METRICS values, where defined
    checks: list[RunCheck] = field(default_factory=list)  # per run, where the caller checked them

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def stuck(self) -> list[RunCheck]:
        return [check for check in self.checks if check.stuck]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single run)."""
    if not values:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else float("nan"))


def build_rows(
    entries: list[tuple[dict, dict]], metric: str = "auto", checks: list[RunCheck] | None = None
) -> list[ReportRow]:
    """Group ``(run_info, metrics_record)`` pairs by (dataset, label), in order of first appearance.

    ``checks`` (one per entry, from :func:`check_run`) fill the runs table and the at-chance marks.
    """
    if checks is not None and len(checks) != len(entries):
        raise ValueError(f"{len(checks)} run checks for {len(entries)} runs")
    rows: dict[tuple[str, str, str], ReportRow] = {}
    for position, (info, record) in enumerate(entries):
        name = main_metric_name(record, metric)
        key = (str(info.get("dataset", "?")), run_label(info), name)
        row = rows.setdefault(key, ReportRow(dataset=key[0], method=key[1], metric=name))
        value = record["metrics"].get(name)
        if value is None:
            row.missing += 1
        else:
            row.values.append(float(value))
        f1 = record["metrics"].get("macro_f1")
        if f1 is not None:
            row.macro_f1.append(float(f1))
        for extra in EXTRA_METRICS:
            if record["metrics"].get(extra) is not None:
                row.extras.setdefault(extra, []).append(float(record["metrics"][extra]))
        row.seeds.append(info.get("seed"))
        if checks is not None:
            row.checks.append(checks[position])
        row.runs.append(record.get("run", "?"))
        row.fusions.append(record.get("fusion", {}).get("views", "?"))
    return list(rows.values())


def _percent(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = mean_std(values)
    return f"{100 * mean:.2f}" if math.isnan(std) else f"{100 * mean:.2f} ± {100 * std:.2f}"


def table_cells(rows: list[ReportRow]) -> tuple[list[str], list[list[str]]]:
    """Header and cells shared by the markdown and the terminal table (percent, mean ± std)."""
    metrics = {row.metric for row in rows}
    single_metric = len(metrics) == 1
    show_f1 = any(row.macro_f1 for row in rows) and metrics != {"macro_f1"}
    header = ["Dataset", "Method"] + ([] if single_metric else ["Metric"]) + ["n"]
    header.append(f"{METRIC_NAMES.get(next(iter(metrics)), 'Main metric')} (%)" if single_metric else "Main metric (%)")
    if show_f1:
        header.append("macro-F1 (%)")
    predicts_objects = any(row.extras.get("object_top1") for row in rows)
    extras = [m for m in EXTRA_METRICS if predicts_objects and m not in metrics and any(r.extras.get(m) for r in rows)]
    header += [f"{METRIC_NAMES[m]} (%)" for m in extras]
    header.append("Seeds")
    cells = []
    for row in rows:
        line = [row.dataset, row.method] + ([] if single_metric else [METRIC_NAMES.get(row.metric, row.metric)])
        n_text = str(row.n) + (f" (+{row.missing} n/a)" if row.missing else "")
        mark = f" {AT_CHANCE_MARK}{len(row.stuck)}" if row.stuck else ""  # how many of its runs are at chance
        line += [n_text, _percent(row.values) + mark]
        if show_f1:
            line.append(_percent(row.macro_f1) if row.macro_f1 else "—")
        line += [_percent(row.extras[m]) if row.extras.get(m) else "—" for m in extras]
        line.append(", ".join("?" if seed is None else str(seed) for seed in row.seeds))
        cells.append(line)
    return header, cells


def numeric_columns(header: list[str]) -> list[bool]:
    """Which columns hold numbers (right-aligned): n and the percentages."""
    return [column == "n" or column.endswith("(%)") for column in header]


def render_markdown(rows: list[ReportRow], split: str) -> str:
    header, cells = table_cells(rows)
    fusions = sorted({fusion for row in rows for fusion in row.fusions})
    lines = [
        "# hoitool report",
        "",
        f"Split: `{split}`. Views fused by: {', '.join(fusions)}. "
        "Values are mean ± sample std (ddof=1) across runs, in percent; n = runs with a defined value.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---:" if is_number else "---" for is_number in numeric_columns(header)) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in cells]
    lines += [f"\n{note}" for note in footnotes(rows)]
    runs_header, runs_cells = runs_table(rows, split)
    if runs_cells:
        lines += ["", "## Runs", "", "| " + " | ".join(runs_header) + " |"]
        lines.append("|" + "|".join("---:" if n else "---" for n in numeric_columns(runs_header)) + "|")
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in runs_cells]
    return "\n".join(lines) + "\n"


def footnotes(rows: list[ReportRow]) -> list[str]:
    """One line per run stuck at chance: which run, its score and interval, chance, and why."""
    notes = []
    for row in rows:
        for check in row.stuck:
            test, chance = check.test, check.chance
            if test is None or chance is None:  # a stuck run always has both (check_run sets them first)
                continue
            notes.append(
                f"{AT_CHANCE_MARK} {row.method}: {check.run} is at chance ({check.stuck}): test "
                f"{100 * test.mean:.1f}% [{100 * test.low:.1f}, {100 * test.high:.1f}], chance {100 * chance:.1f}%"
                + ("" if check.train_accuracy is None else f", train {100 * check.train_accuracy:.1f}%")
                + "; it is counted in its row's mean."
            )
    return notes


def runs_table(rows: list[ReportRow], split: str) -> tuple[list[str], list[list[str]]]:
    """Per run: its test score beside its train accuracy and best epoch, and the at-chance flag."""
    header = [
        "Method",
        "Seed",
        f"{split} accuracy (%) [95% CI]",
        "Train accuracy (%)",
        "Best epoch",
        "At chance",
        "Run",
    ]
    cells = []
    for row in rows:
        for seed, check in zip(row.seeds, row.checks, strict=False):
            test = (
                "—"
                if check.test is None
                else f"{100 * check.test.mean:.1f} [{100 * check.test.low:.1f}, {100 * check.test.high:.1f}]"
            )
            train = "—" if check.train_accuracy is None else f"{100 * check.train_accuracy:.1f}"
            cells.append(
                [
                    row.method,
                    "?" if seed is None else str(seed),
                    test,
                    train,
                    "?" if check.best_epoch is None else str(check.best_epoch),
                    AT_CHANCE_MARK if check.stuck else "",
                    check.run,
                ]
            )
    return header, cells


def render_csv(rows: list[ReportRow]) -> str:
    """Raw fractions at full precision, one row per group."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "dataset",
            "method",
            "metric",
            "n",
            "n_undefined",
            "mean",
            "std",
            "macro_f1_mean",
            "macro_f1_std",
            *(f"{m}_{stat}" for m in EXTRA_METRICS for stat in ("mean", "std")),
            "train_accuracy_mean",
            "runs_at_chance",
            "seeds",
            "fusion",
            "runs",
        ]
    )
    for row in rows:
        mean, std = mean_std(row.values)
        f1_mean, f1_std = mean_std(row.macro_f1)
        writer.writerow(
            [
                row.dataset,
                row.method,
                row.metric,
                row.n,
                row.missing,
                *("" if math.isnan(v) else repr(v) for v in (mean, std, f1_mean, f1_std)),
                *("" if math.isnan(v) else repr(v) for m in EXTRA_METRICS for v in mean_std(row.extras.get(m, []))),
                _train_mean(row),
                len(row.stuck),
                ";".join("" if seed is None else str(seed) for seed in row.seeds),
                ";".join(sorted(set(row.fusions))),
                ";".join(row.runs),
            ]
        )
    return buffer.getvalue()


def _train_mean(row: ReportRow) -> str:
    values = [check.train_accuracy for check in row.checks if check.train_accuracy is not None]
    return repr(float(np.mean(values))) if values else ""
