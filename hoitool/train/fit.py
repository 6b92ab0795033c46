"""Fit: the epoch loop of a run, one job: train an epoch, validate, keep ``best.pt``, log, write ``last.pt``.

:class:`Fitting` is one part of :class:`hoitool.train.loop.Training` (which builds what it reads:
members, loaders, sampler, scaler, board). The order inside an epoch is what resume relies on:
the ``metrics.jsonl`` line (and its TensorBoard scalars) before that epoch's ``last.pt``; the batch
order of epoch ``e`` depends only on ``(seed, e)`` (``sampler.set_epoch``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from hoitool import log, runs
from hoitool.errors import HoitoolError
from hoitool.eval.metrics import accuracy, sklearn_style_map
from hoitool.io.atomic import append_jsonl
from hoitool.losses import supervised_loss, weighted_sum
from hoitool.losses.gradients import combine, gradient_norms, shares
from hoitool.train.checkpoint import capture_rng_state, save_checkpoint
from hoitool.train.data import batches
from hoitool.train.distributed import unwrap
from hoitool.train.state import TrainingParts, plain_number

if TYPE_CHECKING:
    from hoitool.train.loop import Member, Training


def selection_metric(multilabel: bool) -> str:
    return "map" if multilabel else "accuracy"


def score(logits: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """Accuracy, or the PySlowFast-style mAP (classes without positives dropped: small val splits lack some)."""
    if multilabel:
        return sklearn_style_map(logits, targets)[0]
    return accuracy(logits, targets)


class Fitting(TrainingParts):
    """The epoch loop of :class:`hoitool.train.loop.Training` (fresh or resumed alike)."""

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {name: value.to(self.ctx.device, non_blocking=True) for name, value in batch.items()}

    def _forward(self, model: nn.Module, batch: dict, split: str = "train") -> torch.Tensor:
        """The logits of ``model`` on ``batch`` as the run's method feeds it (hoitool.train.methods)."""
        return self.method.forward(model, self.method.inputs(batch, split))["logits"]

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the train split; returns the epoch's mean loss terms, gradient shares and train metric per member.

        Per member and step: the named terms and weights (:meth:`_loss_terms`), their weighted sum
        into the step's loss, and each weighted term's gradient norm at the outputs it read
        (:func:`hoitool.losses.gradients.gradient_norms`: ``autograd.grad`` through the loss
        functions only, every step, so the share needs no sampling and costs little). The epoch's
        ``grad_share_<name>`` is the term's summed norm over the summed norms of all terms.
        """
        for member in self.members:
            member.model.train()
        sums: list[_TermSums] = [_TermSums() for _ in self.members]
        seen_logits: list[list[torch.Tensor]] = [[] for _ in self.members]
        seen_targets: list[torch.Tensor] = []
        seen_index: list[torch.Tensor] = []
        steps = len(self.sampler)
        progress = log.progress(f"epoch {epoch}/{self.epochs}", steps) if self.ctx.is_main else contextlib.nullcontext()
        with progress as bar:
            for batch in batches(self.train_loader):
                batch = self.method.inputs(self._to_device(batch), "train")
                with self._autocast():
                    forwards = [self.method.forward(member.model, batch) for member in self.members]
                logits = [forward["logits"].float() for forward in forwards]
                loss: torch.Tensor | float = 0.0
                real = batch["weight"] > 0
                for position in range(len(self.members)):
                    terms, weights, outputs = self._loss_terms(position, logits, batch, forwards)
                    total = combine(terms, weights)
                    loss = loss + weighted_sum(total, batch["weight"])
                    norms = gradient_norms(terms, weights, batch["weight"], outputs)
                    sums[position].add({**terms, "total": total}, norms, real)
                    seen_logits[position].append(logits[position].detach()[real])
                seen_index.append(batch["index"][real])
                seen_targets.append(batch["target"][real])
                for member in self.members:
                    member.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(cast(torch.Tensor, loss)).backward()
                for member in self.members:
                    self.scaler.step(member.optimizer)
                self.scaler.update()
                if bar is not None:
                    bar.advance()
        reduced = self.ctx.all_reduce_sum(torch.stack([part.vector() for part in sums])).cpu()
        if not torch.isfinite(reduced).all():
            raise HoitoolError(
                f"{self.out}: training diverged in epoch {epoch} (loss is NaN or inf); lower the learning rate"
            )
        record = {}
        indices = torch.cat(seen_index).cpu().numpy()
        targets = torch.cat(seen_targets).cpu().numpy()
        for position, member in enumerate(self.members):
            record.update(sums[position].record(reduced[position], member.prefix))
            gathered = self.ctx.gather((indices, targets, torch.cat(seen_logits[position]).cpu().numpy()))
            all_targets = np.concatenate([part[1] for part in gathered])
            all_logits = np.concatenate([part[2] for part in gathered])
            record[f"{member.prefix}train_{self.metric}"] = score(all_logits, all_targets, self.multilabel)
        return record

    def _loss_terms(
        self, position: int, logits: list[torch.Tensor], batch: dict, forwards: list[dict] | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[torch.Tensor]]:
        """Member ``position``'s named per-sample terms, their weights, and the outputs they read.

        The one place a training method adds a term: its ``terms`` hook (hoitool.train.methods) puts
        it in ``terms`` and its weight in ``weights`` (and any model output it reads, besides the
        logits, in the list); it is then part of the loss, logged as ``loss_<name>`` and measured
        as ``grad_share_<name>``. GLIDN's default: the member's Objective on the logits.
        """
        forwards = forwards if forwards is not None else [{"logits": value} for value in logits]
        return self.method.terms(cast("Training", self), position, batch, forwards, logits)

    def _distill_target(self, position: int, logits: list[torch.Tensor], batch: dict) -> torch.Tensor | None:
        if self.request.kind == "student":
            assert self.teacher_logits is not None  # loaded for every student run (Training._load_teacher)
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
                    outputs.append(self._forward(model, batch, "val").float())
                indices.append(batch["index"])
            logits, index = torch.cat(outputs), torch.cat(indices).cpu().numpy()
            target_tensor = torch.as_tensor(targets[index], device=self.ctx.device)
            record[f"{member.prefix}val_loss"] = supervised_loss(logits, target_tensor, self.multilabel).mean().item()
            record[f"{member.prefix}val_{self.metric}"] = score(logits.cpu().numpy(), targets[index], self.multilabel)
            model.train()
        return record

    def _save_best(self, member: Member, epoch: int, value: float | None) -> None:
        model_config = dict(self.config["model"], view=member.view)
        save_checkpoint(
            runs.best_checkpoint(member.run_dir),
            {
                "epoch": epoch,
                "score": plain_number(value),
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
        append_jsonl(self.out / runs.METRICS_FILE, record)
        if self.board is not None:
            self.board.write(record)
        save_checkpoint(runs.last_checkpoint(self.out), self._state(epoch, rng_states))
        self.saved_epoch = epoch
        summary = "  ".join(
            f"{key} {value:.4f}"
            for key, value in record.items()
            if isinstance(value, float) and key not in ("lr", "time")
        )
        log.info(
            f"epoch {epoch}/{self.epochs}  {summary}  ({record['time']:.1f}s){'  *best' if record.get('best') else ''}"
        )

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


class _TermSums:
    """An epoch's sums per named term (values of real samples, gradient norms per step) and the sample count.

    Names come in the order the objective gives them (the same on every rank), so one stacked
    vector per member is all-reduced under DDP.
    """

    def __init__(self) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.norms: dict[str, torch.Tensor] = {}
        self.count: torch.Tensor | float = 0.0

    def add(self, terms: dict[str, torch.Tensor], norms: dict[str, torch.Tensor], real: torch.Tensor) -> None:
        for name, value in terms.items():
            self.values[name] = self.values.get(name, 0.0) + (value.detach().double() * real).sum()
        for name, norm in norms.items():
            self.norms[name] = self.norms.get(name, 0.0) + norm.detach()
        self.count = self.count + real.sum().double()

    def vector(self) -> torch.Tensor:
        return torch.stack([*self.values.values(), *self.norms.values(), torch.as_tensor(self.count)]).double()

    def record(self, reduced: torch.Tensor, prefix: str) -> dict[str, float]:
        """``loss_<name>`` (per-video means) and ``grad_share_<name>`` from the all-reduced vector."""
        count = reduced[-1].item()
        record = {f"{prefix}loss_{name}": reduced[i].item() / count for i, name in enumerate(self.values)}
        offset = len(self.values)
        norms = {name: reduced[offset + i].item() for i, name in enumerate(self.norms)}
        record.update({f"{prefix}grad_share_{name}": value for name, value in shares(norms).items()})
        return record
