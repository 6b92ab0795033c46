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

from hoitool import log
from hoitool.errors import HoitoolError
from hoitool.eval.metrics import accuracy, sklearn_style_map
from hoitool.io.atomic import append_jsonl
from hoitool.losses import supervised_loss, weighted_sum
from hoitool.train import artifacts
from hoitool.train.checkpoint import capture_rng_state, save_checkpoint
from hoitool.train.data import batches
from hoitool.train.distributed import unwrap
from hoitool.train.state import TrainingParts, plain_number

if TYPE_CHECKING:
    from hoitool.train.loop import Member


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
                loss: torch.Tensor | float = 0.0
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
                self.scaler.scale(cast(torch.Tensor, loss)).backward()
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
                    outputs.append(self._forward(model, batch).float())
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
            artifacts.best_checkpoint(member.run_dir),
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
