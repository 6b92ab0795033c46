"""State and resume: what a run asks the resume policy, the checkpoint state of an epoch, its restore, what was kept.

:class:`RunState` is one part of :class:`hoitool.train.loop.Training`. ``last.pt`` holds everything an
epoch consumes (weights, optimizer, scheduler, grad scaler, epoch, best score, every rank's RNG
states, sampler and loader generator), so a resumed run ends bit-identical to an uninterrupted one
on CPU; a run made with another config or from changed upstream artifacts is refused
(``--force`` overrides): the decision is :func:`hoitool.resume.decide`'s, asked twice, before and after
``last.pt`` is read.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hoitool import resume, runs
from hoitool.errors import HoitoolError, Interrupted, UsageError
from hoitool.resume import Decision, Place, Record, Request
from hoitool.train.checkpoint import load_checkpoint, restore_rng_state
from hoitool.train.distributed import unwrap
from hoitool.train.presets import identity
from hoitool.train.teacher import teacher_fingerprint

if TYPE_CHECKING:
    from hoitool.manifest import Manifest
    from hoitool.store.reader import StoreReader
    from hoitool.train.board import Board
    from hoitool.train.data import EpochBatchSampler, SplitVideos
    from hoitool.train.distributed import DistContext
    from hoitool.train.loop import Member, Training, TrainRequest
    from hoitool.train.methods import Method


class TrainingParts:
    """What :class:`hoitool.train.loop.Training` holds, declared once for its parts (state, fit, predict).

    Annotations only (no values): the type checker's view of the seam between the modules.
    """

    request: TrainRequest
    ctx: DistContext
    config: dict
    out: Path
    epochs: int
    saved_epoch: int
    lock: Any
    board: Board | None
    amp_dtype: torch.dtype | None
    reader: StoreReader
    manifest: Manifest
    multilabel: bool
    metric: str
    videos: dict[str, SplitVideos]
    random_view: bool
    identity: dict
    in_dim: int
    standardization: dict | None  # data.standardize's mean/std (hoitool.train.standardize), None when off
    teacher_record: dict | None
    teacher_logits: torch.Tensor | None
    members: list[Member]
    method: Method
    scaler: torch.amp.GradScaler
    sampler: EpochBatchSampler
    train_loader: Any
    val_loader: Any
    _write_run_files: Callable[[], None]  # the parts' calls into one another
    _state: Callable[[int, list[dict]], dict]
    _autocast: Callable[[], Any]
    _to_device: Callable[[dict], dict]
    _forward: Callable[..., torch.Tensor]  # (model, batch, split="train") -> logits

    @property
    def teacher_dir(self) -> Path:
        """The teacher run of a student run (one line, not a TypeError, when a library caller left it out)."""
        if self.request.teacher is None:
            raise UsageError("a student run needs its teacher: TrainRequest(..., teacher=RUN)")
        return Path(self.request.teacher)


class RunState(TrainingParts):
    """Fresh start or resume of :class:`hoitool.train.loop.Training`, and the state ``last.pt`` holds."""

    def member_dirs(self) -> list[Path]:
        return [self.out, self.out / runs.PEER_DIR] if self.request.kind == "dml" else [self.out]

    def prepare(self) -> dict | None:
        """Lock the run directory, decide fresh start or resume (checking config and upstream); returns the state to resume.

        A fresh run's ``run.json`` (hoitool's marker) is its first file.
        """
        if self.ctx.is_main:
            self.lock = runs.lock_run_dir(self.out)
        decision = resume.decide(self._place(self.out), self._recorded(), self._asked())
        self.ctx.barrier()  # every rank has looked at the directory before rank 0 may delete it
        if decision is Decision.CONTINUE:
            return self._check_resume()
        if self.ctx.is_main:
            if decision is Decision.REPLACE:
                runs.replace_run_dir(self.out)
            self._write_run_files()
        self.ctx.barrier()
        return None

    def _place(self, where: Path) -> Place:
        """This run directory as :mod:`hoitool.resume` words its refusals."""
        return Place(
            where,
            f"{self.request.kind} run",
            remedy=f"to continue it use the same options (or --config {self.out / runs.CONFIG_FILE}), "
            "to start over add --force (without --resume), or choose another --out",
            stale_remedy="--resume --force continues anyway, --force without --resume starts over",
            values=True,
        )

    def _recorded(self) -> Record | None:
        """What the directory holds before ``last.pt`` is read: None when empty, else its saved config."""
        if runs.inspect_run_dir(self.out, self.request.kind) == "empty":
            return None
        saved = runs.saved_config(self.out)  # none: judged by last.pt's own record below
        return Record(config=None if saved is None else identity(saved), saved=runs.last_checkpoint(self.out).exists())

    def _asked(self) -> Request:
        return Request(identity(self.config), force=self.request.force, resume=self.request.resume)

    def _upstream(self, state: dict | None = None) -> dict[str, str]:
        """What the run is made from (name -> fingerprint): now, or as ``state`` (``last.pt``) recorded it."""
        features = state["features_fingerprint"] if state else self.reader.fingerprint
        upstream = {f"features store {self.request.features}": features}
        if self.request.kind == "student":
            teacher = state["teacher"] if state else teacher_fingerprint(self.teacher_dir)
            upstream[f"teacher outputs {self.teacher_dir}"] = teacher["outputs_sha256"]
        upstream.update((state.get("method_upstream") or {}) if state else self.method.upstream())
        return upstream

    def _check_resume(self) -> dict:
        """Load ``last.pt`` and ask the policy again with its record: the config and upstream it was made with."""
        last = runs.last_checkpoint(self.out)
        state = load_checkpoint(last)
        if state["identity"].get("kind") != self.request.kind:
            raise UsageError(f"{self.out}: holds a {state['identity'].get('kind')} run, not a {self.request.kind} run")
        recorded = Record(state["identity"], self._upstream(state))
        asked = Request(self.identity, self._upstream(), force=self.request.force, resume=self.request.resume)
        resume.decide(self._place(last), recorded, asked)
        return state

    def finished(self, state: dict | None) -> bool:
        """All epochs trained and the outputs written from the ``best.pt`` on disk."""
        return (
            state is not None
            and state["epoch"] >= self.epochs
            and all(runs.outputs_current(run_dir) for run_dir in self.member_dirs())
        )

    def _state(self, epoch: int, rng_states: list[dict]) -> dict:
        return {
            "epoch": epoch,
            "members": {
                member.name: {
                    "model": unwrap(member.model).state_dict(),
                    "optimizer": member.optimizer.state_dict(),
                    "scheduler": member.scheduler.state_dict(),
                    "best_score": plain_number(member.best_score),
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
            "standardization": self.standardization,  # data.standardize's statistics, reused on resume
            "method_upstream": self.method.upstream(),  # the method's own inputs (CL-HOI's text), compared on resume
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


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def kept_on_failure(training: Training):
    """An interrupt or a full disk becomes one line saying what was kept and how to resume."""

    def kept() -> str:
        if training.saved_epoch == 0:
            return "no checkpoint yet (the run restarts from epoch 1)"
        return f"{runs.last_checkpoint(training.out)} holds epoch {training.saved_epoch}/{training.epochs}"

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


def plain_number(value) -> float | None:
    """A score as a plain float (numpy scalars would need pickle: checkpoints are data)."""
    return None if value is None else float(value)
