"""State and resume: the resume decision, the checkpoint state of an epoch, its restore, and what was kept.

:class:`RunState` is one part of :class:`hoitool.train.loop.Training`. ``last.pt`` holds everything an
epoch consumes (weights, optimizer, scheduler, grad scaler, epoch, best score, every rank's RNG
states, sampler and loader generator), so a resumed run ends bit-identical to an uninterrupted one
on CPU; a run made with another config or from changed upstream artifacts is refused
(``--force`` overrides).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hoitool import log
from hoitool.errors import HoitoolError, Interrupted, StaleArtifactError, UsageError
from hoitool.train import artifacts
from hoitool.train.checkpoint import load_checkpoint, restore_rng_state
from hoitool.train.distributed import unwrap
from hoitool.train.presets import differences, identity

if TYPE_CHECKING:
    from hoitool.manifest import Manifest
    from hoitool.store.reader import StoreReader
    from hoitool.train.board import Board
    from hoitool.train.data import EpochBatchSampler, SplitVideos
    from hoitool.train.distributed import DistContext
    from hoitool.train.loop import Member, Training, TrainRequest


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
    teacher_record: dict | None
    teacher_logits: torch.Tensor | None
    members: list[Member]
    scaler: torch.amp.GradScaler
    sampler: EpochBatchSampler
    train_loader: Any
    val_loader: Any
    _write_run_files: Callable[[], None]  # the parts' calls into one another
    _state: Callable[[int, list[dict]], dict]
    _autocast: Callable[[], Any]
    _to_device: Callable[[dict], dict]
    _forward: Callable[[torch.nn.Module, dict], torch.Tensor]

    @property
    def teacher_dir(self) -> Path:
        """The teacher run of a student run (one line, not a TypeError, when a library caller left it out)."""
        if self.request.teacher is None:
            raise UsageError("a student run needs its teacher: TrainRequest(..., teacher=RUN)")
        return Path(self.request.teacher)


class RunState(TrainingParts):
    """Fresh start or resume of :class:`hoitool.train.loop.Training`, and the state ``last.pt`` holds."""

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
            now = artifacts.teacher_fingerprint(self.teacher_dir)["outputs_sha256"]
            self._check_upstream("teacher outputs", self.teacher_dir, state["teacher"]["outputs_sha256"], now)
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

    def finished(self, state: dict | None) -> bool:
        """All epochs trained and the outputs written from the ``best.pt`` on disk."""
        return (
            state is not None
            and state["epoch"] >= self.epochs
            and all(artifacts.outputs_current(run_dir) for run_dir in self.member_dirs())
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


def plain_number(value) -> float | None:
    """A score as a plain float (numpy scalars would need pickle: checkpoints are data)."""
    return None if value is None else float(value)
