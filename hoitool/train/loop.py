"""The one training loop behind ``train-teacher``, ``distill`` and ``distill --dml``.

A run trains one model (teacher or student) or two jointly (DML), and owns a
run directory (:mod:`hoitool.runs`). What it guarantees:

* **full-state resume**: ``last.pt`` is written atomically after every epoch and
  holds everything an epoch consumes (weights, optimizer, scheduler, grad
  scaler, epoch, best score, every RNG state of every rank, sampler state); the
  batch order of epoch ``e`` depends only on ``(seed, e)``; so on CPU a run
  interrupted at any point and resumed ends bit-identical to an uninterrupted one;
* ``best.pt`` is chosen on the **val** split only (accuracy for single-label,
  mAP for multi-label), never on test;
* at the end, the best weights' logits for every video and view of every split
  are written with their provenance (what ``distill`` and ``eval`` read);
* upstream artifacts that changed since the run started are refused
  (StaleArtifactError; ``--force`` overrides);
* nothing is written before every check has passed, and only into a directory
  that is missing, empty or hoitool's run of the same kind, held under a lock
  (one process per run directory); running the same command again resumes.

This module is the entry point (:func:`train`, :class:`TrainRequest`) and the set-up of a run
(:class:`Training`: checks, members, data). The other jobs live one per module:
:mod:`hoitool.train.fit` (the epoch loop), :mod:`hoitool.train.state` (the resume decision,
``last.pt``'s state and its restore) and :mod:`hoitool.train.predict` (the outputs).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from hoitool import log, runs
from hoitool.errors import UsageError
from hoitool.io.lock import release
from hoitool.losses import Objective
from hoitool.manifest import Manifest
from hoitool.nn.standardize import FeatureStandardization, standardization_of
from hoitool.settings import resolved
from hoitool.settings.training import DistillStageSettings, TeacherSettings
from hoitool.store import open_store
from hoitool.train.board import Board, require_tensorboard
from hoitool.train.data import (
    EpochBatchSampler,
    ViewDataset,
    clip_labels,
    decide_preload,
    make_loader,
    split_videos,
)
from hoitool.train.distributed import DistContext, init_distributed
from hoitool.train.fit import Fitting, selection_metric
from hoitool.train.methods import Method, method_of
from hoitool.train.predict import SPLITS, Prediction
from hoitool.train.presets import distill_loss_name, identity
from hoitool.train.standardize import feature_statistics, statistics_state
from hoitool.train.state import RunState, kept_on_failure
from hoitool.train.teacher import check_teacher_run, load_teacher_logits, teacher_fingerprint

KINDS = runs.KINDS
PEER_VIEW = {"global": "local", "local": "global"}


@dataclass
class TrainRequest:
    """What a training command asks for; ``config`` is the resolved training config."""

    kind: str  # teacher | student | dml
    features: Path
    out: Path
    config: dict
    teacher: Path | None = None  # the teacher run (kind "student")
    resume: bool = False
    force: bool = False
    label: str | None = None


@dataclass
class Member:
    """One trained model of the run (the main one, or the DML peer) with its optimizer and best score."""

    name: str
    view: str
    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: Objective
    best_score: float | None = None
    best_epoch: int | None = None

    @property
    def prefix(self) -> str:
        return "" if self.name == "main" else f"{self.name}_"


@dataclass
class TrainResult:
    run_dir: Path
    epochs: int  # epochs finished in total
    trained_epochs: int  # epochs trained by this call
    best: dict = field(default_factory=dict)  # member name -> {"epoch", "score"}
    already_finished: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(parameters, optim: dict) -> torch.optim.Optimizer:
    if optim["name"] == "adam":
        return torch.optim.Adam(parameters, lr=optim["lr"], weight_decay=optim["weight_decay"])
    return torch.optim.SGD(parameters, lr=optim["lr"], momentum=optim["momentum"], weight_decay=optim["weight_decay"])


def make_scheduler(optimizer, schedule: dict, epochs: int):
    """Step decay: lr *= gamma at epochs step_size, 2*step_size, ... (stepped once per epoch)."""
    step = schedule["step_size"]
    milestones = list(range(step, epochs, step)) if step else []
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=schedule["gamma"])


def default_label(kind: str, view: str, teacher_view: str | None) -> str:
    """Names as the paper's tables use them: 'global-context', 'global-teacher', 'DML (local)'."""
    return Method.label(Method({}), kind, view, teacher_view)


class Training(RunState, Fitting, Prediction):
    """Set up one run (checks, members, data); resume (:class:`RunState`), fit (:class:`Fitting`), outputs (:class:`Prediction`)."""

    def __init__(self, request: TrainRequest, ctx: DistContext):
        if request.kind not in KINDS:
            raise ValueError(f"unknown run kind {request.kind!r}")
        self.request, self.ctx = request, ctx
        self.config = request.config
        self.out = Path(request.out)
        runs.inspect_run_dir(self.out, request.kind)  # refuse a folder that is not ours before any work
        self.epochs = self.config["train"]["epochs"]
        self.saved_epoch = 0  # the epoch last.pt holds (what an interrupted run keeps)
        self.lock = None
        self.board: Board | None = None  # TensorBoard writers (train.tensorboard, rank 0)
        self.amp_dtype = self._amp_dtype()
        self.reader = open_store(request.features)
        if self.reader.kind != "features":
            raise UsageError(f"{request.features}: is a {self.reader.kind} store, expected a features store")
        self.manifest = self._manifest()
        self.multilabel = self.manifest.multilabel
        self.metric = selection_metric(self.multilabel)
        self.videos = {split: split_videos(self.manifest, self.reader.video_ids, split) for split in SPLITS}
        if not len(self.videos["train"]):
            raise UsageError(f"{request.features}: holds no videos of the manifest's train split")
        if self.config["data"]["labels"] == "clip":  # per-view targets of the train split (val/test: video labels)
            self.videos["train"] = clip_labels(self.manifest, self.reader, self.videos["train"])
        self.num_views = int(self.reader.attrs.get("views") or 1)
        self.random_view = bool(self.config["data"]["random_view"])
        self.view = self.config["model"]["view"]
        self.teacher_info = self._teacher_info()
        self.teacher_view = {
            "teacher": None,
            "student": (self.teacher_info or {}).get("view"),
            "dml": PEER_VIEW.get(self.view),
        }[request.kind]
        if request.kind == "dml" and self.view not in PEER_VIEW:
            raise UsageError("--dml trains a global and a local model together: --view must be global or local")
        self.identity = dict(identity(self.config), kind=request.kind)
        self.method = method_of(self.config)  # hoitool.train.methods: GLIDN unless method.name says otherwise
        self.in_dim = int(
            self.reader.attrs.get("dim")
            or self.reader.read(self.videos["train"].video_ids[0], ["nodes"])["nodes"].shape[-1]
        )
        self._load_teacher()
        self.method.check(self)  # the method's own refusals and inputs, still before any file is written
        with torch.device("meta"):  # the model config is checked now (no memory, no random numbers)
            model = self.method.build_model(self.config["model"], self.in_dim, self.manifest.num_classes)
        self.standardization = None  # data.standardize's statistics (set in setup)
        if self.config["data"]["standardize"] != "none" and standardization_of(model) is None:
            raise UsageError(
                f"data.standardize={self.config['data']['standardize']}: the {self.method.name} model has no "
                "standardisation slot (only the context-graph models do); use --set data.standardize=none"
            )

    def _load_teacher(self) -> None:
        """A student's teacher record and train-split logits (refused here if stale, before any file is written)."""
        if self.request.kind != "student":
            self.teacher_record, self.teacher_logits = None, None
            return
        self.teacher_record = teacher_fingerprint(self.teacher_dir)
        views = self.num_views if self.random_view else 1
        table = load_teacher_logits(
            self.teacher_dir,
            self.reader.fingerprint,
            self.videos["train"].video_ids,
            views,
            self.manifest.classes,
            self.request.force,
        )
        self.teacher_logits = torch.from_numpy(table).to(self.ctx.device)

    # -- set-up ----------------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        train = self.config["train"]
        if not train["amp"]:
            return None
        if self.ctx.device.type != "cuda":
            raise UsageError(f"--amp needs a CUDA device (running on {self.ctx.device}); drop --amp for CPU training")
        return torch.bfloat16 if train["amp_dtype"] == "bf16" else torch.float16

    def _manifest(self) -> Manifest:
        path = self.config["data"]["manifest"] or self.reader.manifest_path
        if not path:
            raise UsageError(
                f"{self.request.features}: the store does not say which manifest it was built from; pass --set data.manifest=PATH"
            )
        return Manifest.load(path)

    def _teacher_info(self) -> dict | None:
        return check_teacher_run(self.teacher_dir) if self.request.kind == "student" else None

    def _distill_settings(self) -> dict | None:
        if self.request.kind == "teacher":
            return None
        distill = self.config["distill"]
        return {
            "loss": distill_loss_name(self.config, self.multilabel),
            "T": float(distill["T"]),
            "lambda1": float(distill["lambda1"]),
            "lambda2": float(distill["lambda2"]),
        }

    def _objective(self) -> Objective:
        settings = self._distill_settings()
        if settings is None:
            return Objective(multilabel=self.multilabel)
        return Objective(self.multilabel, settings["loss"], settings["T"], settings["lambda1"], settings["lambda2"])

    def _run_info(self, view: str, teacher_view: str | None) -> dict:
        info = {
            "kind": self.request.kind,
            "view": view,
            "teacher_view": teacher_view,
            "seed": self.config["train"]["seed"],
            "multilabel": self.multilabel,
            "classes": list(self.manifest.classes),
            "dataset": self.manifest.dataset,
            "features": str(Path(self.request.features).resolve()),
            "features_fingerprint": self.reader.fingerprint,
            "distill": self._distill_settings(),
            "label": self.request.label or self.method.label(self.request.kind, view, teacher_view),
            "method": self.method.run_info(),
            "selection": f"val_{self.metric}",
        }
        if self.request.kind == "student":
            info["teacher"] = str(self.teacher_dir.resolve())
        return info

    def _build_member(self, name: str, view: str, run_dir: Path) -> Member:
        model_config = dict(self.config["model"], view=view)
        model = self.method.build_model(model_config, self.in_dim, self.manifest.num_classes)
        if self.standardization is not None:  # before DDP wraps it: every rank holds the same buffers
            cast(FeatureStandardization, standardization_of(model)).set(
                self.standardization["mean"], self.standardization["std"]
            )
        model = self.ctx.wrap(model.to(self.ctx.device))
        optimizer = make_optimizer(model.parameters(), self.config["optim"])
        scheduler = make_scheduler(optimizer, self.config["schedule"], self.epochs)
        return Member(name, view, run_dir, model, optimizer, scheduler, self._objective())

    def _dataset(self, split: str, random_view: bool) -> ViewDataset:
        dataset = ViewDataset(self.reader, self.videos[split], random_view=random_view)
        data = self.config["data"]
        if len(dataset) and decide_preload(data["preload"], dataset, data["memory_budget_gb"]):
            dataset.preload(show_progress=self.ctx.is_main)
        return dataset

    def _write_run_files(self) -> None:
        runs.write_run_files(self.out, self._run_info(self.view, self.teacher_view), self.config)
        if self.request.kind == "dml":
            runs.write_run_files(self.out / runs.PEER_DIR, self._run_info(PEER_VIEW[self.view], self.view), None)

    def _standardization(self, state: dict | None) -> dict | None:
        """data.standardize's statistics: computed once on a fresh run (train split only), else last.pt's."""
        if self.config["data"]["standardize"] == "none":
            return None
        if state is not None and state.get("standardization") is not None:
            return state["standardization"]
        views = None if self.random_view else 1
        stats = feature_statistics(self.reader, self.videos["train"].video_ids, views, str(self.request.features))
        self.reader.close()  # reopened lazily; DataLoader workers open their own
        if self.ctx.is_main:
            log.info(
                f"data.standardize: mean and std of {len(stats.mean)} dimensions over {stats.count} valid nodes of "
                f"{stats.videos} train videos ({stats.constant} without spread: centred only)"
            )
        return statistics_state(stats)

    def setup(self, state: dict | None) -> None:
        """Build data and models, restore ``state`` (a resumed run's description is rewritten first)."""
        if state is not None and self.ctx.is_main:
            self._write_run_files()
        self.method.setup(self)  # the run directory is ours and locked: what the method builds before training
        self.standardization = self._standardization(state)
        seed = self.config["train"]["seed"]
        seed_everything(seed)
        self.members = [self._build_member("main", self.view, self.out)]
        if self.request.kind == "dml":
            self.members.append(self._build_member("peer", PEER_VIEW[self.view], self.out / runs.PEER_DIR))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        batch_size = self.config["train"]["batch_size"]
        self.train_set = self._dataset("train", self.random_view)
        self.sampler = EpochBatchSampler(
            len(self.train_set),
            batch_size,
            seed,
            shuffle=True,
            num_views=self.num_views,
            random_view=self.random_view,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        pin = self.ctx.device.type == "cuda"
        workers = self.config["data"]["workers"]
        self.train_loader = make_loader(self.train_set, workers, pin, seed, batch_sampler=self.sampler)
        self.val_set = self._dataset("val", False) if self.ctx.is_main else None
        self.val_loader = None
        if self.val_set is not None and len(self.val_set):
            self.val_loader = make_loader(
                self.val_set,
                workers,
                pin,
                seed + 1,
                batch_sampler=EpochBatchSampler(len(self.val_set), batch_size, seed, shuffle=False),
            )
        if state is not None:
            self._restore(state)
            self.saved_epoch = state["epoch"]
        if self.config["train"]["tensorboard"] and self.ctx.is_main:
            self.board = Board(self.out, {member.name: member.prefix for member in self.members}, self.saved_epoch)


def train(request: TrainRequest, on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Run (or resume, or finish) one training run; see the module docstring.

    ``request.config`` is validated against the stage's schema first (hoitool.settings.training),
    so a library caller gets the same one-line refusal as the CLI before anything is written.
    """
    schema = TeacherSettings if request.kind == "teacher" else DistillStageSettings
    request.config = resolved(schema, request.config)  # every range, choice and cross-key rule
    if request.config["train"]["tensorboard"]:
        require_tensorboard()
    ctx = init_distributed(request.config["runtime"]["device"])
    training = None
    try:
        training = Training(request, ctx)
        state = training.prepare()
        start = state["epoch"] if state is not None else 0
        if state is not None and training.finished(state):
            if ctx.is_main:
                log.info(f"{request.out}: already finished ({start} epochs, outputs written); nothing to do")
            best = {
                name: {"epoch": saved["best_epoch"], "score": saved["best_score"]}
                for name, saved in state["members"].items()
            }
            return TrainResult(training.out, start, 0, best, already_finished=True)
        training.setup(state)
        if ctx.is_main:
            if state is not None:
                log.info(f"{request.out}: resuming after epoch {start}/{training.epochs}")
            runs.truncate_metrics(training.out, start)  # every start: no epoch is ever logged twice
        with kept_on_failure(training):
            trained = training.fit(start, on_epoch_end)
            if ctx.is_main:
                training.write_outputs()
        ctx.barrier()  # other ranks leave the process group only after rank 0 is done with it
        return TrainResult(training.out, training.epochs, trained, _best(training))
    finally:
        if training is not None and training.board is not None:
            training.board.close()
        if training is not None and training.lock is not None:
            release(training.lock)  # also for DataLoader workers that may outlive this call for a moment
        ctx.shutdown()


def _best(training: Training) -> dict:
    return {member.name: {"epoch": member.best_epoch, "score": member.best_score} for member in training.members}
