"""The one training loop behind ``train-teacher``, ``distill`` and ``distill --dml``.

A run trains one model (teacher or student) or two jointly (DML), and owns a
run directory (:mod:`hoitool.train.artifacts`). What it guarantees:

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
"""

from __future__ import annotations

import contextlib
import errno
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hoitool import log
from hoitool.errors import HoitoolError, Interrupted, StaleArtifactError, UsageError
from hoitool.eval.metrics import accuracy, sklearn_style_map
from hoitool.eval.runs import write_outputs
from hoitool.io.atomic import append_jsonl
from hoitool.io.lock import release
from hoitool.losses import Objective, supervised_loss, weighted_sum
from hoitool.manifest import Manifest
from hoitool.nn.models import build_model
from hoitool.settings import resolved
from hoitool.settings.training import DistillStageSettings, TeacherSettings
from hoitool.store import open_store
from hoitool.train import artifacts
from hoitool.train.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from hoitool.train.board import Board, require_tensorboard
from hoitool.train.data import (
    EpochBatchSampler,
    SplitVideos,
    VideoDataset,
    ViewDataset,
    batches,
    decide_preload,
    make_loader,
    split_videos,
)
from hoitool.train.distributed import DistContext, init_distributed, unwrap
from hoitool.train.presets import check_config, differences, distill_loss_name, identity

KINDS = artifacts.KINDS
PEER_VIEW = {"global": "local", "local": "global"}
SPLITS = ("train", "val", "test")


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


def selection_metric(multilabel: bool) -> str:
    return "map" if multilabel else "accuracy"


def score(logits: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Accuracy, or the PySlowFast-style mAP (classes without positives dropped: small val splits lack some)."""
    if multilabel:
        return sklearn_style_map(logits, targets)[0]
    return accuracy(logits, targets)


def default_label(kind: str, view: str, teacher_view: str | None) -> str:
    """Names as the paper's tables use them: 'global-context', 'global-teacher', 'DML (local)'."""
    if kind == "teacher":
        return "baseline" if view == "baseline" else f"{view}-context"
    if kind == "student":
        return f"{teacher_view}-teacher"
    return f"DML ({view})"


class Training:
    """Set up (fresh or resumed), fit, and write the outputs of one run."""

    def __init__(self, request: TrainRequest, ctx: DistContext):
        if request.kind not in KINDS:
            raise ValueError(f"unknown run kind {request.kind!r}")
        self.request, self.ctx = request, ctx
        self.config = request.config
        self.out = Path(request.out)
        artifacts.inspect_run_dir(self.out, request.kind)  # refuse a folder that is not ours before any work
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
        self.in_dim = int(
            self.reader.attrs.get("dim")
            or self.reader.read(self.videos["train"].video_ids[0], ["nodes"])["nodes"].shape[-1]
        )
        with torch.device("meta"):  # the model config is checked now (no memory, no random numbers)
            build_model(self.config["model"], self.in_dim, self.manifest.num_classes)
        self._load_teacher()

    def _load_teacher(self) -> None:
        """A student's teacher record and train-split logits (refused here if stale, before any file is written)."""
        if self.request.kind != "student":
            self.teacher_record, self.teacher_logits = None, None
            return
        self.teacher_record = artifacts.teacher_fingerprint(self.request.teacher)
        views = self.num_views if self.random_view else 1
        table = artifacts.load_teacher_logits(
            self.request.teacher,
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
        return artifacts.check_teacher_run(self.request.teacher) if self.request.kind == "student" else None

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
            "label": self.request.label or default_label(self.request.kind, view, teacher_view),
            "selection": f"val_{self.metric}",
        }
        if self.request.kind == "student":
            info["teacher"] = str(Path(self.request.teacher).resolve())
        return info

    def _check_resume(self) -> dict:
        """Load ``last.pt`` after checking the run was made with this config and this store."""
        saved = artifacts.saved_config(self.out)
        if saved is not None:
            changes = differences(identity(saved), identity(self.config))
            if changes:
                raise UsageError(
                    f"{self.out}: already holds a run made with a different config ({'; '.join(changes[:4])}); "
                    f"to continue it use the same options (or --config {self.out / artifacts.CONFIG_FILE}), "
                    "to start over add --force (without --resume), or choose another --out"
                )
        state = load_checkpoint(artifacts.last_checkpoint(self.out))
        if state["identity"].get("kind") != self.request.kind:
            raise UsageError(f"{self.out}: holds a {state['identity'].get('kind')} run, not a {self.request.kind} run")
        changes = differences(state["identity"], self.identity)
        if changes:
            raise UsageError(
                f"{artifacts.last_checkpoint(self.out)}: was made with a different config ({'; '.join(changes[:4])})"
            )
        self._check_upstream(
            "features store", self.request.features, state["features_fingerprint"], self.reader.fingerprint
        )
        if self.request.kind == "student":
            now = artifacts.teacher_fingerprint(self.request.teacher)["outputs_sha256"]
            self._check_upstream("teacher outputs", self.request.teacher, state["teacher"]["outputs_sha256"], now)
        return state

    def _check_upstream(self, what: str, path, recorded: str, current: str) -> None:
        if recorded == current:
            return
        message = f"{path}: the {what} changed since {self.out} started ({recorded} -> {current})"
        if not self.request.force:
            raise StaleArtifactError(
                message + "; --resume --force continues anyway, --force without --resume starts over"
            )
        log.warning(f"{message}; resuming anyway (--force)")

    def _build_member(self, name: str, view: str, run_dir: Path) -> Member:
        model_config = dict(self.config["model"], view=view)
        model = build_model(model_config, self.in_dim, self.manifest.num_classes).to(self.ctx.device)
        model = self.ctx.wrap(model)
        optimizer = make_optimizer(model.parameters(), self.config["optim"])
        scheduler = make_scheduler(optimizer, self.config["schedule"], self.epochs)
        return Member(name, view, run_dir, model, optimizer, scheduler, self._objective())

    def _dataset(self, split: str, random_view: bool) -> ViewDataset:
        dataset = ViewDataset(self.reader, self.videos[split], random_view=random_view)
        data = self.config["data"]
        if len(dataset) and decide_preload(data["preload"], dataset, data["memory_budget_gb"]):
            dataset.preload(show_progress=self.ctx.is_main)
        return dataset

    def member_dirs(self) -> list[Path]:
        return [self.out, self.out / artifacts.PEER_DIR] if self.request.kind == "dml" else [self.out]

    def prepare(self) -> dict | None:
        """Lock the run directory, decide fresh start or resume (checking config and upstream); returns the state to resume.

        A fresh run's ``run.json`` (hoitool's marker) is its first file.
        """
        if self.ctx.is_main:
            self.lock = artifacts.lock_run_dir(self.out)
        decision = artifacts.decide_run_dir(self.out, self.request.kind, self.request.resume, self.request.force)
        self.ctx.barrier()  # every rank has looked at the directory before rank 0 may delete it
        if decision in ("resume", "auto"):
            return self._check_resume()
        if self.ctx.is_main:
            if decision == "replace":
                artifacts.replace_run_dir(self.out)
            self._write_run_files()
        self.ctx.barrier()
        return None

    def _write_run_files(self) -> None:
        artifacts.write_run_files(self.out, self._run_info(self.view, self.teacher_view), self.config)
        if self.request.kind == "dml":
            artifacts.write_run_files(
                self.out / artifacts.PEER_DIR, self._run_info(PEER_VIEW[self.view], self.view), None
            )

    def finished(self, state: dict | None) -> bool:
        """All epochs trained and the outputs written from the ``best.pt`` on disk."""
        return (
            state is not None
            and state["epoch"] >= self.epochs
            and all(artifacts.outputs_current(run_dir) for run_dir in self.member_dirs())
        )

    def setup(self, state: dict | None) -> None:
        """Build data and models, restore ``state`` (a resumed run's description is rewritten first)."""
        if state is not None and self.ctx.is_main:
            self._write_run_files()
        seed = self.config["train"]["seed"]
        seed_everything(seed)
        self.members = [self._build_member("main", self.view, self.out)]
        if self.request.kind == "dml":
            self.members.append(self._build_member("peer", PEER_VIEW[self.view], self.out / artifacts.PEER_DIR))
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

    # -- state -------------------------------------------------------------------
    def _state(self, epoch: int, rng_states: list[dict]) -> dict:
        return {
            "epoch": epoch,
            "members": {
                member.name: {
                    "model": unwrap(member.model).state_dict(),
                    "optimizer": member.optimizer.state_dict(),
                    "scheduler": member.scheduler.state_dict(),
                    "best_score": _number(member.best_score),
                    "best_epoch": member.best_epoch,
                }
                for member in self.members
            },
            "scaler": self.scaler.state_dict(),
            "rng": rng_states,  # one per rank
            "sampler": self.sampler.state_dict(),
            "loader_generator": self.train_loader.generator.get_state(),
            "identity": self.identity,
            "features_fingerprint": self.reader.fingerprint,
            "teacher": self.teacher_record,
        }

    def _restore(self, state: dict) -> None:
        for member in self.members:
            saved = state["members"][member.name]
            unwrap(member.model).load_state_dict(saved["model"])
            member.optimizer.load_state_dict(saved["optimizer"])
            member.scheduler.load_state_dict(saved["scheduler"])
            member.best_score, member.best_epoch = saved["best_score"], saved["best_epoch"]
        self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        restore_rng_state(rng[self.ctx.rank] if len(rng) == self.ctx.world_size else rng[0])
        self.sampler.load_state_dict(state["sampler"])
        self.train_loader.generator.set_state(state["loader_generator"])

    # -- one epoch ----------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {name: value.to(self.ctx.device, non_blocking=True) for name, value in batch.items()}

    def _forward(self, model: nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["nodes"], batch["valid"], batch["boxes"], batch["frame_size"])

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the train split; returns the epoch's mean loss terms and train metric per member."""
        for member in self.members:
            member.model.train()
        term_names = ("ce", "distill", "total") if self.request.kind != "teacher" else ("ce", "total")
        sums = torch.zeros(len(self.members), len(term_names) + 1, device=self.ctx.device, dtype=torch.float64)
        seen_logits: list[list[torch.Tensor]] = [[] for _ in self.members]
        seen_index: list[torch.Tensor] = []
        steps = len(self.sampler)
        progress = log.progress(f"epoch {epoch}/{self.epochs}", steps) if self.ctx.is_main else contextlib.nullcontext()
        with progress as bar:
            for batch in batches(self.train_loader):
                batch = self._to_device(batch)
                with self._autocast():
                    logits = [self._forward(member.model, batch) for member in self.members]
                logits = [value.float() for value in logits]
                loss = 0.0
                real = batch["weight"] > 0
                for position, member in enumerate(self.members):
                    terms = member.objective(
                        logits[position], batch["target"], self._distill_target(position, logits, batch)
                    )
                    loss = loss + weighted_sum(terms["total"], batch["weight"])
                    for column, name in enumerate(term_names):
                        sums[position, column] += (terms[name].detach().double() * real).sum()
                    sums[position, -1] += real.sum()
                    seen_logits[position].append(logits[position].detach()[real])
                seen_index.append(batch["index"][real])
                for member in self.members:
                    member.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                for member in self.members:
                    self.scaler.step(member.optimizer)
                self.scaler.update()
                if bar is not None:
                    bar.advance()
        sums = self.ctx.all_reduce_sum(sums).cpu()
        if not torch.isfinite(sums).all():
            raise HoitoolError(
                f"{self.out}: training diverged in epoch {epoch} (loss is NaN or inf); lower the learning rate"
            )
        record = {}
        indices = torch.cat(seen_index).cpu().numpy()
        for position, member in enumerate(self.members):
            count = sums[position, -1].item()
            for column, name in enumerate(term_names):
                record[f"{member.prefix}loss_{name}"] = sums[position, column].item() / count
            gathered = self.ctx.gather((indices, torch.cat(seen_logits[position]).cpu().numpy()))
            all_index = np.concatenate([part[0] for part in gathered])
            all_logits = np.concatenate([part[1] for part in gathered])
            record[f"{member.prefix}train_{self.metric}"] = score(
                all_logits, self.videos["train"].targets[all_index], self.multilabel
            )
        return record

    def _distill_target(self, position: int, logits: list[torch.Tensor], batch: dict) -> torch.Tensor | None:
        if self.request.kind == "student":
            return self.teacher_logits[batch["index"], batch["view"] if self.random_view else 0]
        if self.request.kind == "dml":
            return logits[1 - position].detach()
        return None

    @torch.no_grad()
    def validate(self) -> dict:
        """Val loss and metric per member (rank 0); empty when there is no val split."""
        if self.val_loader is None:
            return {}
        record = {}
        targets = self.videos["val"].targets
        for member in self.members:
            model = unwrap(member.model)
            model.eval()
            outputs, indices = [], []
            for batch in batches(self.val_loader):
                batch = self._to_device(batch)
                with self._autocast():
                    outputs.append(self._forward(model, batch).float())
                indices.append(batch["index"])
            logits, index = torch.cat(outputs), torch.cat(indices).cpu().numpy()
            target_tensor = torch.as_tensor(targets[index], device=self.ctx.device)
            record[f"{member.prefix}val_loss"] = supervised_loss(logits, target_tensor, self.multilabel).mean().item()
            record[f"{member.prefix}val_{self.metric}"] = score(logits.cpu().numpy(), targets[index], self.multilabel)
            model.train()
        return record

    # -- checkpoints -------------------------------------------------------------------
    def _save_best(self, member: Member, epoch: int, value: float | None) -> None:
        model_config = dict(self.config["model"], view=member.view)
        save_checkpoint(
            artifacts.best_checkpoint(member.run_dir),
            {
                "epoch": epoch,
                "score": _number(value),
                "metric": f"val_{self.metric}" if value is not None else None,
                "model": unwrap(member.model).state_dict(),
                "model_config": model_config,
                "in_dim": self.in_dim,
                "num_classes": self.manifest.num_classes,
            },
        )
        member.best_score, member.best_epoch = value, epoch

    def end_epoch(self, epoch: int, record: dict, started: float, rng_states: list[dict]) -> None:
        """Pick and save the best (val only), log the epoch, then write ``last.pt`` (rank 0)."""
        if not self.ctx.is_main:
            return
        record.update(self.validate())
        for member in self.members:
            key = f"{member.prefix}val_{self.metric}"
            value = record.get(key)
            if value is not None and np.isnan(value):
                value = None
            if self.val_loader is None:  # no val split: the last epoch stands in, said so in the log
                improved = True
            else:  # the first epoch is kept until a val score beats it (a tiny multi-label val split may score NaN)
                improved = member.best_epoch is None or (
                    value is not None and (member.best_score is None or value > member.best_score)
                )
            if improved:
                self._save_best(member, epoch, value)
            record[f"{member.prefix}best"] = improved
        record["time"] = round(time.monotonic() - started, 3)
        append_jsonl(self.out / artifacts.METRICS_FILE, record)
        if self.board is not None:
            self.board.write(record)
        save_checkpoint(artifacts.last_checkpoint(self.out), self._state(epoch, rng_states))
        self.saved_epoch = epoch
        summary = "  ".join(
            f"{key} {value:.4f}"
            for key, value in record.items()
            if isinstance(value, float) and key not in ("lr", "time")
        )
        log.info(
            f"epoch {epoch}/{self.epochs}  {summary}  ({record['time']:.1f}s){'  *best' if record.get('best') else ''}"
        )

    # -- the whole run ------------------------------------------------------------------
    def fit(self, start_epoch: int, on_epoch_end: Callable[[int, dict], None] | None = None) -> int:
        if self.ctx.is_main and self.val_loader is None:
            log.info("no val videos: best.pt follows the last epoch (the test split is never used for selection)")
        trained = 0
        for epoch in range(start_epoch + 1, self.epochs + 1):
            started = time.monotonic()
            self.sampler.set_epoch(epoch)
            record = {"epoch": epoch, "lr": self.members[0].optimizer.param_groups[0]["lr"]}
            record.update(self.train_epoch(epoch))
            for member in self.members:
                member.scheduler.step()
            rng_states = self.ctx.gather(capture_rng_state())  # every rank's, for last.pt
            self.end_epoch(epoch, record, started, rng_states)
            trained += 1
            if on_epoch_end is not None:
                on_epoch_end(epoch, record)
        return trained

    @torch.no_grad()
    def predict(self, member: Member) -> dict[str, np.ndarray]:
        """Logits of the member's best weights for every video and view of every split."""
        best = load_checkpoint(artifacts.best_checkpoint(member.run_dir))
        model = build_model(best["model_config"], best["in_dim"], best["num_classes"])
        model.load_state_dict(best["model"])
        model.to(self.ctx.device).eval()
        columns = {"video_ids": [], "view_index": [], "split": [], "logits": [], "targets": []}
        for split in SPLITS:
            videos: SplitVideos = self.videos[split]
            if not len(videos):
                continue
            dataset = VideoDataset(self.reader, videos)
            loader = make_loader(
                dataset,
                self.config["data"]["workers"],
                self.ctx.device.type == "cuda",
                self.config["train"]["seed"],
                batch_size=self.config["train"]["batch_size"],
                persistent=False,
            )
            one_hot = videos.one_hot()
            with log.progress(f"outputs {member.view} {split}", len(loader)) as bar:
                for batch in batches(loader):
                    index = batch["index"].numpy()
                    with self._autocast():
                        logits = self._forward(model, self._to_device(batch)).float()
                    columns["logits"].append(logits.cpu().numpy())
                    columns["video_ids"].append(np.asarray(videos.video_ids, dtype=object)[index].astype(str))
                    columns["view_index"].append(batch["view"].numpy())
                    columns["split"].append(np.full(len(index), split))
                    columns["targets"].append(one_hot[index])
                    bar.advance()
        return {name: np.concatenate(parts) for name, parts in columns.items()}

    def write_outputs(self) -> None:
        for member in self.members:
            arrays = self.predict(member)
            best = load_checkpoint(artifacts.best_checkpoint(member.run_dir))
            provenance = artifacts.outputs_provenance(
                member.run_dir, self.request.features, self.reader.fingerprint, best["epoch"], self.teacher_record
            )
            write_outputs(member.run_dir, provenance=provenance, **arrays)
            log.info(
                f"{member.run_dir}: outputs of {len(set(arrays['video_ids']))} videos "
                f"({len(arrays['video_ids'])} views) from best.pt (epoch {best['epoch']})"
            )


def train(request: TrainRequest, on_epoch_end: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Run (or resume, or finish) one training run; see the module docstring.

    ``request.config`` is validated against the stage's schema first (hoitool.settings.training),
    so a library caller gets the same one-line refusal as the CLI before anything is written.
    """
    schema = TeacherSettings if request.kind == "teacher" else DistillStageSettings
    request.config = resolved(schema, request.config)
    check_config(request.config)
    if request.config["train"]["tensorboard"]:
        require_tensorboard()
    ctx = init_distributed(request.config["runtime"]["device"])
    training = None
    try:
        training = Training(request, ctx)
        state = training.prepare()
        start = state["epoch"] if state is not None else 0
        if training.finished(state):
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
            artifacts.truncate_metrics(training.out, start)  # every start: no epoch is ever logged twice
        with _kept_on_failure(training):
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


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def _kept_on_failure(training: Training):
    """An interrupt or a full disk becomes one line saying what was kept and how to resume."""

    def kept() -> str:
        if training.saved_epoch == 0:
            return "no checkpoint yet (the run restarts from epoch 1)"
        return f"{artifacts.last_checkpoint(training.out)} holds epoch {training.saved_epoch}/{training.epochs}"

    try:
        yield
    except Interrupted as exc:
        cause = str(exc).split(";")[0]
        raise Interrupted(f"{cause}; {training.out}: {kept()}; run the same command again to resume") from None
    except OSError as exc:
        if exc.errno not in _NO_SPACE:
            raise
        writing = f" writing {Path(exc.filename).name}" if exc.filename else ""
        raise HoitoolError(
            f"{training.out}: no space left on the device{writing} ({exc.strerror or exc}); "
            f"kept: {kept()}; free some space and run the same command again to resume"
        ) from None


def _number(value) -> float | None:
    """A score as a plain float (numpy scalars would need pickle: checkpoints are data)."""
    return None if value is None else float(value)


def _best(training: Training) -> dict:
    return {member.name: {"epoch": member.best_epoch, "score": member.best_score} for member in training.members}
