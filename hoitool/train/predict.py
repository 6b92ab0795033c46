"""Prediction: the best weights' logits for every video and view of every split, written with provenance.

:class:`Prediction` is one part of :class:`hoitool.train.loop.Training`; what it writes
(``outputs.npz``/``.json``, :func:`hoitool.runs.write_outputs`) is what ``distill`` and ``eval`` read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from hoitool import log, runs
from hoitool.runs import write_outputs
from hoitool.train.checkpoint import load_checkpoint
from hoitool.train.data import SplitVideos, VideoDataset, batches, make_loader
from hoitool.train.state import TrainingParts

if TYPE_CHECKING:
    from hoitool.train.loop import Member, Training

SPLITS = ("train", "val", "test")  # every split is predicted, in this order


class Prediction(TrainingParts):
    """Writing a finished run's outputs, from ``best.pt`` on disk (so a resumed or re-run finish gives the same)."""

    @torch.no_grad()
    def predict(self, member: Member) -> dict[str, Any]:
        """Logits of the member's best weights for every video and view of every split (``extra``: the method's arrays)."""
        best = load_checkpoint(runs.best_checkpoint(member.run_dir))
        model = self.method.build_model(best["model_config"], best["in_dim"], best["num_classes"])
        model.load_state_dict(best["model"])
        model.to(self.ctx.device).eval()
        columns: dict[str, list[np.ndarray]] = {
            "video_ids": [],
            "view_index": [],
            "split": [],
            "logits": [],
            "targets": [],
        }
        extra: dict[str, list[np.ndarray]] = {}  # the method's further arrays (e.g. object logits)
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
                        forward = self.method.forward(model, self.method.inputs(self._to_device(batch), split))
                    logits = forward["logits"].float()
                    for name, array in self.method.output_arrays(forward, batch).items():
                        extra.setdefault(name, []).append(array)
                    columns["logits"].append(logits.cpu().numpy())
                    columns["video_ids"].append(np.asarray(videos.video_ids, dtype=object)[index].astype(str))
                    columns["view_index"].append(batch["view"].numpy())
                    columns["split"].append(np.full(len(index), split))
                    columns["targets"].append(one_hot[index])
                    bar.advance()
        arrays: dict[str, Any] = {name: np.concatenate(parts) for name, parts in columns.items()}
        arrays["extra"] = {name: np.concatenate(parts) for name, parts in extra.items()}
        return arrays

    def write_outputs(self) -> None:
        for member in self.members:
            arrays = self.predict(member)
            best = load_checkpoint(runs.best_checkpoint(member.run_dir))
            provenance = runs.outputs_provenance(
                member.run_dir, self.request.features, self.reader.fingerprint, best["epoch"], self.teacher_record
            )
            write_outputs(member.run_dir, provenance=provenance, **arrays)
            self.method.write_outputs(cast("Training", self), member)
            log.info(
                f"{member.run_dir}: outputs of {len(set(arrays['video_ids']))} videos "
                f"({len(arrays['video_ids'])} views) from best.pt (epoch {best['epoch']})"
            )
