"""``--method dual_attention``: Xiao et al.'s dual attention over actions and objects as a train-teacher run.

The model is :class:`hoitool.nn.dual_attention.DualAttentionNet` (docs/method-dual-attention.md):
first-stage action and object heads, their probabilities as priors, the tanh attention of Eq. 6-9
over the regions of each frame, second-stage heads on the attended features. The regions are the
graph nodes (``dual_attention.regions: nodes``, every features store) or the cells of the frame
maps (``cells``, a store made with ``extract features --frame-maps``).

Hooks (:mod:`hoitool.train.methods`):

* ``check``: teacher runs only; the object classes (:func:`object_vocabulary`) and each video's
  object-slot targets from the manifest's ``objects`` -- a dataset without object labels is refused
  here, in one line, before any file is written; ``cells`` needs the store's ``frame_maps``.
  The targets (and the arrays the regions need) ride on each split's
  :class:`hoitool.train.data.SplitVideos`, so every batch carries ``objects`` (B, slots).
* ``build_model``: the network, sized by the store (feature size, sampled frames) and the object classes.
* ``forward``: ``logits`` = the second-stage action logits (what GLIDN's loop, val selection and the
  outputs use), plus both stages' object logits and the first-stage action logits.
* ``terms``: ``ce`` (second-stage action), ``ce_first``, ``object`` and ``object_first`` (both summed
  over the slots), weighted ``1, first_weight, object_weight, object_weight * first_weight``
  (:func:`hoitool.nn.dual_attention.dual_attention_loss`).
* ``output_arrays``: ``object_logits`` (rows, slots, objects + 1) and ``object_targets`` (rows, slots)
  beside the logits in ``outputs.npz``; ``eval`` reports their top-1.
* ``run_info``: the settings, the object classes (the last logit of each slot is the null label) and
  the regions.

:func:`attention_maps` draws a finished run's attention on a video's frames (weak localisation).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hoitool.errors import UsageError
from hoitool.train.methods import Method, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hoitool.train.loop import Training

CELL_ARRAYS = ("frame_maps", "frame_valid")  # what the map-cell regions read from the store


def object_targets(manifest, video_ids: list[str], object_classes: list[str], slots: int) -> np.ndarray:
    """(N, slots) int64: each video's object-slot targets (null label for an empty slot, IGNORE without objects)."""
    from hoitool.nn.dual_attention import object_slot_targets

    entries = manifest.by_id()
    rows = [object_slot_targets(entries[video].objects, object_classes, slots, video) for video in video_ids]
    return np.asarray(rows, dtype=np.int64).reshape(len(video_ids), slots)


def run_object_classes(manifest, slots: int, where: str) -> list[str]:
    """The run's object classes; a manifest without any object label is one UsageError (nothing to train on)."""
    from hoitool.nn.dual_attention import object_vocabulary

    classes = object_vocabulary(manifest.object_classes, [video.objects for video in manifest.videos], slots)
    if not classes:
        raise UsageError(
            f"{where}: no video of dataset {manifest.dataset!r} has object labels (manifest 'objects'); "
            "--method dual_attention trains on action and object labels (prepare ssv2, charades, cad120 and "
            "synthetic write them)"
        )
    return classes


@register_method("dual_attention")
class DualAttention(Method):
    """Dual attention over actions and objects (see the module docstring)."""

    kinds = ("teacher",)

    def __init__(self, config: dict):
        super().__init__(config)
        self.settings = dict(config.get("dual_attention") or {})
        self.object_classes: list[str] = []
        self.num_frames: int | None = None
        self.multilabel = False

    # -- checks and set-up (before any file is written) -------------------------------------------
    def check(self, training: Training) -> None:
        super().check(training)
        settings = self.settings
        where = str(training.request.features)
        slots = int(settings["object_slots"])
        self.object_classes = run_object_classes(training.manifest, slots, f"{where} (its manifest)")
        self.multilabel = training.multilabel
        for videos in training.videos.values():
            videos.objects = object_targets(training.manifest, videos.video_ids, self.object_classes, slots)
        train_objects = object_targets(training.manifest, training.videos["train"].video_ids, self.object_classes, 1)
        if not (train_objects != -1).any():
            raise UsageError(f"{where}: no video of the train split has object labels (manifest 'objects')")
        if settings["regions"] == "cells":
            if training.config["data"]["standardize"] != "none":
                raise UsageError(
                    "data.standardize: its statistics are the nodes', not the feature-map cells' "
                    "(dual_attention.regions=cells); use --set data.standardize=none"
                )
            if not training.reader.attrs.get("frame_map_grid"):
                raise UsageError(
                    f"{where}: holds no frame maps (dual_attention.regions=cells); extract features with "
                    "--frame-maps, or use --set dual_attention.regions=nodes"
                )
            for videos in training.videos.values():
                videos.arrays = CELL_ARRAYS
        first = training.videos["train"].video_ids[0]
        self.num_frames = int(
            training.reader.attrs.get("num_frames") or training.reader.read(first, ["nodes"])["nodes"].shape[1]
        )
        if settings["temporal"] == "trn" and self.num_frames < 2:
            raise UsageError(
                f"{where}: {self.num_frames} sampled frame per video; the TRN head needs 2 "
                "(--set dual_attention.temporal=mean)"
            )

    # -- the model ----------------------------------------------------------------------------------
    def build_model(self, model_config: dict, in_dim: int, num_classes: int) -> nn.Module:
        from hoitool.nn.dual_attention import DualAttentionNet

        s = self.settings
        return DualAttentionNet(
            in_dim,
            num_classes,
            len(self.object_classes),
            object_slots=s["object_slots"],
            hidden=s["hidden"],
            prior_hidden=s["prior_hidden"],
            attention_dim=s["attention_dim"],
            temporal=s["temporal"],
            num_frames=self.num_frames,
            head_hidden=s["head_hidden"],
            trn_max_tuples=s["trn_max_tuples"],
            trn_max_order=s["trn_max_order"],
            dropout=s["dropout"],
            multilabel=self.multilabel,
        )

    def regions(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, N, D) regions and their (B, T, N) validity: the nodes, or every cell of each real frame."""
        if self.settings["regions"] == "cells":
            cells = batch["frame_maps"]
            return cells, batch["frame_valid"].bool()[..., None].expand(*cells.shape[:3])
        return batch["nodes"], batch["valid"]

    def forward(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        regions, valid = self.regions(batch)
        output = model(regions, valid)
        return {
            "logits": output.action,
            "action_first": output.action_first,
            "object": output.object,
            "object_first": output.object_first,
            "alpha": output.alpha,
            "beta": output.beta,
        }

    def terms(
        self, training: Training, position: int, batch: dict, outputs: list[dict], logits: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[torch.Tensor]]:
        from hoitool.nn.dual_attention import DualAttentionOutput, dual_attention_loss

        out = outputs[position]
        first, objects = float(self.settings["first_weight"]), float(self.settings["object_weight"])
        output = DualAttentionOutput(
            action_first=out["action_first"].float(),
            object_first=out["object_first"].float(),
            action=logits[position],
            object=out["object"].float(),
            alpha=out["alpha"],
            beta=out["beta"],
        )
        values = dual_attention_loss(output, batch["target"], batch["objects"], self.multilabel, first, objects)
        terms = {name: values[key] for name, key in TERMS.items()}
        weights = {"ce": 1.0, "ce_first": first, "object": objects, "object_first": objects * first}
        return terms, weights, [logits[position], out["action_first"], out["object"], out["object_first"]]

    def output_arrays(self, outputs: dict, batch: dict) -> dict[str, np.ndarray]:
        """The object logits and targets of a batch, for ``outputs.npz``."""
        return {
            "object_logits": outputs["object"].float().cpu().numpy(),
            "object_targets": batch["objects"].cpu().numpy(),
        }

    # -- records ------------------------------------------------------------------------------------
    def run_info(self) -> dict:
        return {
            "name": self.name,
            "settings": self.settings,
            "object_classes": list(self.object_classes),
            "null_label": len(self.object_classes),
            "num_frames": self.num_frames,
        }

    def label(self, kind: str, view: str, teacher_view: str | None) -> str:
        return f"dual-attention ({self.settings['regions']}, {self.settings['temporal']})"


TERMS = {"ce": "action", "ce_first": "action_first", "object": "object", "object_first": "object_first"}


# -- weak localisation: a finished run's attention drawn on a video's frames -----------------------


def attention_maps(
    run_dir: Path | str,
    video_ids: list[str],
    out_dir: Path | str | None = None,
    view: int = 0,
    paths: list[Path] | None = None,
) -> list[Path]:
    """Draw the action (alpha) and object (beta) attention of a dual-attention run on each video's frames.

    Reads the run's ``best.pt`` and the features store and manifest it was trained on (refused when the
    store changed since: StaleArtifactError); decodes the sampled frames when the source video is
    there (else grey); one PNG per video, ``paths`` or ``out_dir/<video>.png`` (boxes outlined by
    weight for node regions, a heat map over the cells for map regions), titled with the predicted
    action and objects. Returns the paths written.
    """
    import torch

    from hoitool.errors import StaleArtifactError
    from hoitool.manifest import Manifest
    from hoitool.nn.dual_attention import plot_attention_maps
    from hoitool.runs import best_checkpoint, read_run_info, saved_config
    from hoitool.store import open_store
    from hoitool.train.checkpoint import load_checkpoint
    from hoitool.train.data import SampleRef, SplitVideos, ViewDataset, collate
    from hoitool.train.methods import method_info

    run_dir = Path(run_dir)
    if paths is None:
        if out_dir is None:
            raise ValueError("give out_dir or paths")
        paths = [Path(out_dir) / f"{video}.png" for video in video_ids]
    info = read_run_info(run_dir)
    record = method_info(info)
    if record.get("name") != "dual_attention":
        raise UsageError(
            f"{run_dir}: a {record.get('name')} run; attention maps are drawn for --method dual_attention runs"
        )
    config = saved_config(run_dir)
    if config is None:
        raise UsageError(f"{run_dir}: has no saved config (config.resolved.yaml); is it a finished run?")
    reader = open_store(info["features"])
    if reader.fingerprint != info["features_fingerprint"]:
        raise StaleArtifactError(f"{info['features']}: the features store changed since {run_dir} was trained")
    manifest = Manifest.load(config["data"]["manifest"] or reader.manifest_path)
    entries = manifest.by_id()
    missing = [video for video in video_ids if video not in entries or video not in set(reader.video_ids)]
    if missing:
        raise UsageError(f"{missing[0]}: not a video of {info['features']}")
    method = DualAttention(config)
    method.object_classes, method.num_frames = record["object_classes"], record["num_frames"]
    method.multilabel = bool(info["multilabel"])
    best = load_checkpoint(best_checkpoint(run_dir))
    model = method.build_model(best["model_config"], best["in_dim"], best["num_classes"])
    model.load_state_dict(best["model"])
    model.eval()
    cells = method.settings["regions"] == "cells"
    videos = SplitVideos("attention", list(video_ids), np.zeros(len(video_ids), np.int64), False, len(info["classes"]))
    videos.arrays = CELL_ARRAYS if cells else ()
    dataset = ViewDataset(reader, videos, random_view=True)  # every stored view kept: ``view`` picks one
    written = []
    for position, video in enumerate(video_ids):
        arrays = reader.read(video)
        with torch.no_grad():
            outputs = method.forward(model, collate([dataset[SampleRef(position, view, 1.0)]]))
        alpha, beta = outputs["alpha"][0].numpy(), outputs["beta"][0].numpy()
        frames = _frames(manifest, entries[video], arrays["frame_indices"][view])
        grid = int(reader.attrs["frame_map_grid"]) if cells else None
        path = Path(paths[position])
        action = info["classes"][int(outputs["logits"][0].argmax())]
        names = [*record["object_classes"], "-"]  # the null label: no object in that slot
        objects = ", ".join(names[int(index)] for index in outputs["object"][0].argmax(dim=-1))
        plot_attention_maps(
            path,
            alpha,
            beta,
            (int(arrays["frame_size"][0]), int(arrays["frame_size"][1])),
            frames=frames,
            boxes=None if cells else arrays["boxes"][view],
            grid=(grid, grid) if grid else None,
            valid=None if cells else arrays["valid"][view],
            frame_indices=arrays["frame_indices"][view],
            title=f"{video}: predicted {action} (objects: {objects})",
        )
        written.append(path)
    return written


def _frames(manifest, video, indices: np.ndarray) -> list[np.ndarray] | None:
    """The sampled frames decoded from the source, or None when it is not there (drawn on grey)."""
    from hoitool.video.reader import read_frames

    source = manifest.source_path(video)
    if not source.exists():
        return None
    unique, inverse = np.unique(np.maximum(indices, 0), return_inverse=True)
    decoded = read_frames(source, video.kind, unique)
    return [decoded[i] for i in inverse]
