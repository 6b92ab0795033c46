"""The demo: every stage on rendered synthetic videos, the paper's configuration first, per-context accuracy.

prepare (the sharp classes: local-relation, cross-frame and order; docs/synthetic-dataset.md) ->
extract boxes -> extract features -> per seed: the paper's views (baseline, global and local teachers,
global->local and local->global students, DML; Table 1), the same three views with hoitool's time
and geometry encodings (Table 2, extensions, not the paper's), one row per extra method (``methods``:
dual attention; anticipation, a student of the local teacher's node embeddings seeing the first half
of each video; cl_hoi with a simulated text teacher, not a VLM) -> eval -> the report (``hoitool report``'s table, with its at-chance guard) -> test
accuracy per context with bootstrap intervals -> one attention figure.

Each stage is the library's own function, so re-running the demo resumes where it stopped. Each
training run's per-epoch lines go to ``RUN/train.log``; what the demo reports is the list of steps
(through :mod:`hoitool.log`) and the tables it returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hoitool import log
from hoitool.datasets.common import prepare_dataset
from hoitool.datasets.synthetic import CONTEXTS
from hoitool.errors import StaleArtifactError, UsageError
from hoitool.eval.evaluate import metrics_for_run
from hoitool.eval.fusion import fuse_views, probabilities
from hoitool.eval.report import (
    build_rows,
    check_run,
    render_csv,
    render_markdown,
)
from hoitool.eval.stats import context_accuracy, paired_difference
from hoitool.extract.boxes import extract_boxes
from hoitool.extract.features import extract_features
from hoitool.io.atomic import write_text
from hoitool.manifest import Manifest

DEMO_DEFAULTS = {
    # 9 classes x 60 videos: 12 val and 12 test videos per class (val as large as test), 36 train.
    "data": {"videos_per_class": 60, "frames": 15, "size": 64, "seed": 0, "class_set": "sharp"},
    "boxes": {"frames": 8, "top_k": 2},
    # Box crops through the first two stages of a random-weight ResNet-18 (no weights are downloaded):
    # shallow random features keep the colours that the classes are made of. The demo preset standardises them
    # per dimension (data.standardize=train, every view): their shared offset kept the paper's global view at chance.
    "features": {"backbone": "resnet18", "weights": "random", "layer": "layer2", "mode": "crop", "crop_size": 32},
    "train": {"preset": "demo", "seeds": [0, 1], "set": []},  # "set": extra key=value for every run
    "distill": {"T": 4.0, "generalized": 0.5},
    # Table 2: hoitool's extensions, turned on for every view of that table only.
    "encodings": ["model.time_encoding=true", "model.geometry_encoding=true"],
    # Extra methods (issue 9), one row each: names of hoitool.train.methods with a demo recipe (METHOD_RUNS).
    "methods": ["dual_attention", "anticipation", "cl_hoi"],
    # One torch thread: on a small shared CPU machine more threads mostly wait for each other.
    "runtime": {"device": "auto", "workers": 0, "threads": 1},
}
PAPER, EXTENSIONS, METHODS = "Table 1: the paper's configuration", "Table 2: + time and geometry encodings", "Methods"
SIMULATED_TEXT = "vlm_simulated.jsonl"  # cl_hoi's teacher text: hoitool text simulate's, written beside the data


def _simulated_text(out: Path) -> list[str]:
    """cl_hoi's inputs: the simulated teacher's text of the demo's manifest (written once; a stand-in, not a VLM)."""
    from hoitool.text.simulated import simulated_teacher
    from hoitool.text.vlm_import import write_vlm_import

    path = out / "data" / SIMULATED_TEXT
    if not path.is_file():
        write_vlm_import(simulated_teacher(Manifest.load(out / "data" / "manifest.json")), path)
    return [f"cl_hoi.vlm_import={path.resolve()}"]


@dataclass(frozen=True)
class MethodRun:
    """An extra method's demo run (issue 9): a ``train-teacher`` run, or a ``distill`` run of the seed's ``teacher``.

    ``label`` is its row in the tables; ``inputs(out)`` writes what the method reads and returns the
    further ``--set`` overrides that name it.
    """

    kind: str
    view: str
    overrides: tuple[str, ...]
    label: str
    inputs: Callable[[Path], list[str]] | None = None
    teacher: str | None = None  # a student's teacher: the name of a Table 1 run of the same seed


LEAD_TIME = "50%"  # anticipation's student sees the first half of each video's frames
# The hook for issue 9's methods: name -> its demo run. The local teacher of every seed writes its node
# embeddings (train.embeddings), which the anticipation student distils from; anticipation and cl_hoi train
# the local view (chosen when the global view was still at chance on the raw random-weight features; README).
METHOD_RUNS: dict[str, MethodRun] = {
    "dual_attention": MethodRun(
        "teacher",
        "global",
        (
            "method.name=dual_attention",
            "dual_attention.regions=nodes",
            *(f"dual_attention.{key}=64" for key in ("hidden", "prior_hidden", "attention_dim", "head_hidden")),
            "dual_attention.trn_max_order=4",
        ),
        "dual_attention",
    ),
    "anticipation": MethodRun(
        "student",
        "local",
        ("method.name=anticipation", f"anticipation.lead_time={LEAD_TIME}"),
        f"anticipation τ={LEAD_TIME} (sees the first {LEAD_TIME} of frames; local-teacher -> local)",
        teacher="local",
    ),
    "cl_hoi": MethodRun(
        "teacher",
        "local",
        ("method.name=cl_hoi", "cl_hoi.text_encoder=tiny:64"),
        "cl_hoi, simulated text teacher, not a VLM (local)",
        _simulated_text,
    ),
}
EMBEDDINGS_TEACHER = "local"  # the Table 1 teacher that saves its node embeddings (anticipation's L_d reads them)


@dataclass
class DemoRun:
    """One training run of the demo: where, what (table, label, seed) and how it went."""

    path: Path
    table: str
    label: str
    seed: int
    seconds: float = 0.0
    resumed: bool = False


@dataclass
class DemoResult:
    out: Path
    report: Path
    runs: list[DemoRun] = field(default_factory=list)
    tables: str = ""  # the markdown the demo prints: the report and the per-context tables
    figure: Path | None = None


# -- logging: a run's epochs into its own file --------------------------------------------------
class _Below(logging.Filter):
    """Let only warnings and errors through (the terminal, while a run writes its epochs to its log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


class _RunLogHandler(logging.Handler):
    """Lines into ``RUN/train.log``, held back until the run has claimed its directory (``run.json``).

    A run refuses a directory holding anything but its own files, so the log may not be the first file.
    """

    def __init__(self, run_dir: Path):
        super().__init__()
        self.path = run_dir / "train.log"
        self.held: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.held.append(self.format(record))
        self.flush()

    def flush(self) -> None:
        if self.held and (self.path.parent / "run.json").exists():
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write("".join(f"{line}\n" for line in self.held))
            self.held = []


@contextmanager
def quiet():
    """Only warnings and errors reach the handlers installed now (the terminal); progress as log lines."""
    below, others, previous = _Below(), list(log.logger.handlers), log.progress_factory()
    for other in others:
        other.addFilter(below)
    log.set_progress_factory(log.log_progress)
    try:
        yield
    finally:
        log.set_progress_factory(previous)
        for other in others:
            other.removeFilter(below)


@contextmanager
def run_log(run_dir: Path):
    """While training ``run_dir``: its info lines and progress go to ``RUN/train.log``, not the terminal."""
    handler = _RunLogHandler(run_dir)
    with quiet():
        log.logger.addHandler(handler)
        try:
            yield
        finally:
            log.logger.removeHandler(handler)
            handler.flush()


# -- the stages ---------------------------------------------------------------------------------
def _step(message: str) -> None:
    log.info(f"demo: {message}")


def prepare_inputs(out: Path, config: dict) -> Path:
    """prepare -> extract boxes -> extract features; returns the features store (each step resumes)."""
    data, boxes, features = out / "data", out / "boxes.h5", out / "features.h5"
    runtime = config["runtime"]
    start = time.monotonic()
    manifest = prepare_dataset("synthetic", data, dict(config["data"]))
    _step(f"prepared {len(manifest.videos)} rendered videos ({len(manifest.classes)} classes) in {data}")
    box_config = {"source": "dataset", **config["boxes"], "runtime": {"workers": runtime["workers"]}}
    extract_boxes(data / "manifest.json", boxes, box_config)
    _step(f"boxes of {config['boxes']['frames']} sampled frames per video in {boxes}")
    feats = config["features"]
    feature_config = {
        "backbone": {"arch": feats["backbone"], "weights": feats["weights"], "layer": feats.get("layer")},
        "mode": feats["mode"],
        "crop_size": feats["crop_size"],
        "frame_features": False,
        "runtime": {"device": runtime["device"], "workers": runtime["workers"]},
    }
    extract_features(boxes, features, feature_config)
    _step(f"node features ({feats['backbone']} {feats.get('layer') or ''}, crops) in {features}")
    _step(f"inputs ready in {time.monotonic() - start:.0f} s")
    return features


def _train(kind: str, features: Path, run: DemoRun, config: dict, view: str, teacher: Path | None = None, overrides=()):
    """One train-teacher / distill run of the demo, its epochs logged to RUN/train.log."""
    from hoitool.train.loop import PEER_VIEW, TrainRequest, train
    from hoitool.train.presets import resolve_training_config

    distill = kind != "teacher"
    options = {
        "model.view": view,
        "train.seed": run.seed,
        "runtime.device": config["runtime"]["device"],
        "data.workers": config["runtime"]["workers"],
    }
    if distill:
        generalized = float(config["distill"]["generalized"])
        options.update({"distill.T": config["distill"]["T"], "distill.lambda1": 1 - generalized})
        options.update({"distill.lambda2": generalized, "distill.dml": kind == "dml"})
    teacher_view = None
    if kind == "student" and teacher is not None:
        from hoitool.runs import read_run_info

        teacher_view = read_run_info(teacher)["view"]
    elif kind == "dml":
        teacher_view = PEER_VIEW[view]
    resolved = resolve_training_config(
        distill, config["train"]["preset"], None, options, [*config["train"]["set"], *overrides], teacher_view
    )
    start = time.monotonic()
    with run_log(run.path):
        label = None if kind == "dml" else run.label  # a DML run's two models: "DML (local)", "DML (global)"
        try:
            result = train(TrainRequest(kind, features, run.path, resolved, teacher=teacher, label=label))
        except (UsageError, StaleArtifactError) as exc:  # a run of an older demo config: the demo has no --force
            if "--force" not in str(exc):
                raise
            raise type(exc)(f"{exc} (hoitool demo has no --force: choose a new --out)") from None
    run.seconds, run.resumed = time.monotonic() - start, result.already_finished
    best = result.best.get("main", {})
    how = "already finished" if result.already_finished else f"{run.seconds:.0f} s"
    _step(f"{kind} {run.label} seed {run.seed} -> {run.path} ({how}; best epoch {best.get('epoch')})")


def check_methods(config: dict) -> None:
    """Every asked method has a demo recipe (one line before any work otherwise)."""
    for method in config["methods"]:
        if method not in METHOD_RUNS:
            raise UsageError(f"demo: no demo recipe for method {method!r} (known: {', '.join(METHOD_RUNS) or 'none'})")


def train_all(features: Path, runs_dir: Path, config: dict) -> list[DemoRun]:
    """Every run of every seed: Table 1 (the paper's views), Table 2 (encodings), then the extra methods."""
    done: list[DemoRun] = []
    for seed in config["train"]["seeds"]:
        base = runs_dir / f"seed{seed}"

        def run(name: str, table: str, label: str, seed=seed, base=base) -> DemoRun:
            done.append(DemoRun(base / name, table, label, seed))
            return done[-1]

        for view in ("baseline", "global", "local"):
            label = f"{view}-context" if view != "baseline" else view
            extra = ["train.embeddings=true"] if view == EMBEDDINGS_TEACHER else []
            _train("teacher", features, run(view, PAPER, label), config, view, None, extra)
        for teacher, student in (("global", "local"), ("local", "global")):
            target = run(f"{teacher}-to-{student}", PAPER, f"{teacher}-teacher -> {student}")
            _train("student", features, target, config, student, teacher=base / teacher)
        _train("dml", features, run("dml", PAPER, "DML (local)"), config, "local")
        done.append(DemoRun(base / "dml" / "peer", PAPER, "DML (global)", seed))
        for view in ("baseline", "global", "local"):
            label = f"{view} + time + geometry"
            _train(
                "teacher", features, run(f"{view}-encoded", EXTENSIONS, label), config, view, None, config["encodings"]
            )
        check_methods(config)
        for method in config["methods"]:
            recipe = METHOD_RUNS[method]
            overrides = [*recipe.overrides, *(recipe.inputs(runs_dir.parent) if recipe.inputs else [])]
            method_teacher = base / recipe.teacher if recipe.teacher else None
            target = run(method, METHODS, recipe.label)
            _train(recipe.kind, features, target, config, recipe.view, method_teacher, overrides)
    return done


# -- the tables ---------------------------------------------------------------------------------
def _correct(run_dir: Path, split: str) -> dict[str, bool]:
    """Per video of ``split``: is the run's top class (views fused by max) the label."""
    from hoitool.runs import load_run

    run = load_run(run_dir)
    rows = np.flatnonzero(run.split == split)
    ids, scores, targets, _ = fuse_views(
        run.video_ids[rows], probabilities(run.logits[rows], False), run.targets[rows], "max"
    )
    return dict(zip(ids.tolist(), (scores.argmax(1) == targets.argmax(1)).tolist(), strict=True))


def context_tables(runs: list[DemoRun], manifest: Manifest) -> str:
    """Per table: test accuracy over all videos and per context, mean over seeds [95% bootstrap interval].

    Seeds share the data (the same test videos), so the intervals resample seeds and test videos, and
    the paired differences (a relation view minus the baseline of its table) are paired by video.
    """
    context_of = manifest.extra.get("class_context", {})
    test = sorted(video.id for video in manifest.videos if video.split == "test")
    by_id = manifest.by_id()
    contexts = np.asarray([context_of.get(manifest.classes[by_id[v].labels[0]], "?") for v in test])
    order = [c for c in CONTEXTS if c in set(contexts)]
    labels: dict[tuple[str, str], np.ndarray] = {}
    for table in dict.fromkeys(run.table for run in runs):
        for label in dict.fromkeys(run.label for run in runs if run.table == table):
            members = [run for run in runs if run.table == table and run.label == label]
            rows = [_correct(run.path, "test") for run in members]
            labels[(table, label)] = np.asarray([[row[v] for v in test] for row in rows], float)
    lines = [
        f"Test accuracy per context ({len(test)} test videos; mean over seeds [95% bootstrap interval over "
        f"seeds and videos]; chance {1 / len(manifest.classes):.3f})",
    ]
    for table in dict.fromkeys(run.table for run in runs):
        lines += ["", f"**{table}**", "", "| method | seeds | all | " + " | ".join(order) + " |"]
        lines.append("|---|---:|" + "---:|" * (len(order) + 1))
        keys = [key for key in labels if key[0] == table]
        for key in keys:
            cells = context_accuracy(labels[key], contexts, order)
            values = [cells[name].text() if name in cells else "—" for name in ["all", *order]]
            lines.append(f"| {key[1]} | {labels[key].shape[0]} | " + " | ".join(values) + " |")
        baseline = next((key for key in keys if key[1].startswith("baseline")), None)
        pairs = [key for key in keys if baseline and key != baseline and labels[key].shape == labels[baseline].shape]
        if baseline and pairs:
            lines += ["", f"Paired differences to {baseline[1]} (same seeds and test videos)", ""]
            lines += ["| difference | all | " + " | ".join(order) + " |", "|---|" + "---:|" * (len(order) + 1)]
            for key in pairs:
                diffs = [paired_difference(labels[key], labels[baseline]).text(signed=True)]
                for name in order:
                    mask = contexts == name
                    diffs.append(paired_difference(labels[key][:, mask], labels[baseline][:, mask]).text(signed=True))
                lines.append(f"| {key[1]} - {baseline[1]} | " + " | ".join(diffs) + " |")
    return "\n".join(lines) + "\n"


def report_runs(runs: list[DemoRun], report_dir: Path) -> str:
    """eval every run on test (as ``hoitool eval``) and write ``hoitool report``'s files; returns its markdown."""
    entries, checks = [], []
    from hoitool.runs import read_run_info

    with quiet():  # "evaluating ..." once per run: the report says what came of it
        for run in runs:
            record = metrics_for_run(run.path, "test")
            entries.append((read_run_info(run.path), record))
            checks.append(check_run(run.path, "test", record))
    rows = build_rows(entries, "auto", checks)
    markdown = render_markdown(rows, "test")
    write_text(report_dir / "report.md", markdown)
    write_text(report_dir / "report.csv", render_csv(rows))
    return markdown


def figure(runs: list[DemoRun], manifest: Manifest, out: Path) -> Path | None:
    """One attention figure: the first seed's local teacher (per frame) on a test video of a local class."""
    from hoitool.eval.attention import attention_figure

    context_of = manifest.extra.get("class_context", {})
    run = next((r for r in runs if r.table == PAPER and r.path.name == "local"), None)
    tests = [v for v in manifest.sorted_videos() if v.split == "test"]
    wanted = [v for v in tests if context_of.get(manifest.classes[v.labels[0]]) == "local"]
    if run is None or not wanted:
        return None
    attention_figure(run.path, wanted[0].id, out)
    return out


def run_demo(out: Path | str, config: dict) -> DemoResult:
    """Run every stage into ``out`` (resuming what is there); returns where everything is and the tables."""
    import torch

    out = Path(out)
    start = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(int(config["runtime"]["threads"]))
    try:
        return _run(out, config, start)
    finally:
        torch.set_num_threads(threads)


def _run(out: Path, config: dict, start: float) -> DemoResult:
    check_methods(config)
    features = prepare_inputs(out, config)
    runs = train_all(features, out / "runs", config)
    _step(f"{len(runs)} runs trained in {time.monotonic() - start:.0f} s so far; evaluating")
    report = out / "report"
    markdown = report_runs(runs, report)
    manifest = Manifest.load(out / "data" / "manifest.json")
    contexts = context_tables(runs, manifest)
    write_text(report / "contexts.md", contexts)
    drawn = figure(runs, manifest, report / "attention-local.png")
    if drawn is not None:
        _step(f"attention figure: {drawn}")
    _step(
        f"finished in {time.monotonic() - start:.0f} s: report in {report}; every run (and its train.log) in {out / 'runs'}"
    )
    return DemoResult(out, report, runs, markdown + "\n" + contexts, drawn)
