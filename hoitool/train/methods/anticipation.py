"""``--method anticipation``: anticipation by distillation (Tran et al.) as a ``distill`` method.

The student sees each video only up to ``t - tau`` (``anticipation.lead_time``; ``t`` the video's
last frame), the frozen teacher (a ``train-teacher`` run) the whole clip; the student learns
(Eq. 1-2, :class:`hoitool.nn.anticipation.AnticipationObjective`):

* ``ce`` -- the labels, on the labelled videos;
* ``soft`` -- the teacher's soft predictions (its logits, ``outputs.npz``), on the unlabelled videos
  (manifest ``extra.unlabelled: true`` or ``anticipation.unlabelled``, a file of ids);
* ``distill`` (weight ``lam``) -- ``L_d`` of Eq. 3-5 between the student's and the teacher's node
  embeddings after the graph layers (the teacher's ``embeddings.npz``,
  :mod:`hoitool.train.methods.embeddings`, refused when stale), or the ``L_direct`` ablation.

Validation and the run's outputs use the same truncated input; :func:`evaluate_lead_times` scores a
finished run at other lead times (``hoitool eval RUN --lead-time ...``). docs/method-anticipation.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from hoitool import log
from hoitool.errors import UsageError
from hoitool.train.methods import Method, method_info, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hoitool.nn.models import ContextGraphNet
    from hoitool.train.loop import Training


LEAD_TIME_METHODS = ("glidn", "anticipation")  # their models are rebuilt from best.pt alone


def _frames(manifest, video_ids: list[str], lead) -> tuple[np.ndarray, np.ndarray]:
    """``(t, tau)`` in decoded frames for each video (the manifest's fps / frame count; one line if missing)."""
    from hoitool.nn.anticipation import lead_time_frames

    by_id = manifest.by_id()
    pairs = [lead_time_frames(by_id[video], lead) for video in video_ids]
    return np.array([p[0] for p in pairs], dtype=np.float64), np.array([p[1] for p in pairs], dtype=np.float64)


def label_at_end(video, classes: list[str], multilabel: bool) -> list[int] | None:
    """The classes of ``video`` at ``t`` (its last frame) where the manifest has them; None: use its labels.

    Charades' ``extra.actions`` (``[class, start, end]`` seconds): the actions whose interval holds
    ``t`` (multi-label; possibly none). ``extra.segments`` (``[start, end, label]`` frames) whose labels
    are the manifest's class names: the segment at ``t`` (:func:`hoitool.nn.anticipation.label_at`).
    CAD-120's segments name sub-activities, not its classes (activities), so they are not used.
    """
    from hoitool.nn.anticipation import label_at

    extra = video.extra or {}
    if not video.num_frames:
        return None
    end = video.num_frames - 1
    if multilabel and extra.get("actions") and video.fps:
        t = end / video.fps
        return sorted({int(c) for c, start, stop in extra["actions"] if start <= t <= stop})
    segments = extra.get("segments") or []
    if segments and all(str(label) in classes for _, _, label in segments):
        found = label_at(segments, end)
        return None if found is None else [classes.index(str(found))]
    return None


def labels_at_t(training: Training) -> int:
    """Replace each split's targets by the labels at ``t`` where the manifest has them; how many changed."""
    by_id, classes = training.manifest.by_id(), list(training.manifest.classes)
    changed = 0
    for videos in training.videos.values():
        for row, video in enumerate(videos.video_ids):
            labels = label_at_end(by_id[video], classes, videos.multilabel)
            if labels is None or (not videos.multilabel and not labels):
                continue
            if videos.multilabel:
                target = np.zeros(videos.num_classes, dtype=videos.targets.dtype)
                target[labels] = 1
            else:
                target = np.asarray(labels[0], dtype=videos.targets.dtype)
            changed += int(not np.array_equal(videos.targets[row], target))
            videos.targets[row] = target
    return changed


def truncated(batch: dict, end: np.ndarray, tau: np.ndarray) -> dict:
    """``batch`` cut at ``t - tau`` for the videos at its ``index`` positions (``end``/``tau`` per split position)."""
    import torch

    from hoitool.nn.anticipation import truncate_batch

    if "frame_indices" not in batch:
        raise UsageError("anticipation needs each sampled frame's decoded index (frame_indices) in the batch")
    index = batch["index"].cpu().numpy()
    device = batch["nodes"].device
    as_tensor = lambda values: torch.as_tensor(values[index], dtype=torch.float64, device=device)  # noqa: E731
    return truncate_batch(batch, as_tensor(end), as_tensor(tau))


@register_method("anticipation")
class Anticipation(Method):
    """Tran et al.'s anticipation by distillation on a ``distill --teacher RUN`` run (see the module docstring)."""

    kinds = ("student",)

    def check(self, training: Training) -> None:
        super().check(training)
        from hoitool.nn.anticipation import parse_lead_time, unlabelled_videos
        from hoitool.train.methods.embeddings import load_teacher_embeddings

        settings = self.config["anticipation"]
        if not settings["lead_time"]:
            raise UsageError("--method anticipation needs --lead-time (seconds, e.g. 1.5s, or a fraction, e.g. 80%)")
        if training.ctx.world_size > 1:
            raise UsageError("--method anticipation trains on one process (its node embeddings bypass DDP's hooks)")
        self.lead = parse_lead_time(settings["lead_time"])
        if settings["labels"] == "at_t":
            changed = labels_at_t(training)  # train, val selection and the outputs all score the label at t
            if changed:
                log.info(f"anticipation: {changed} video(s) labelled by what happens at t (their last frame)")
        self.frames = {
            split: _frames(training.manifest, videos.video_ids, self.lead) for split, videos in training.videos.items()
        }
        unlabelled = unlabelled_videos(training.manifest.videos, settings["unlabelled"])
        train_ids = training.videos["train"].video_ids
        self.labelled = np.array([video not in unlabelled for video in train_ids])
        if not self.labelled.any():
            raise UsageError("every train video is unlabelled: anticipation needs some labels (Eq. 1's S)")
        views = training.num_views if training.random_view else 1
        self.teacher_embeddings = load_teacher_embeddings(
            training.teacher_dir, training.reader.fingerprint, train_ids, views, training.request.force
        )
        self.unlabelled_count = int((~self.labelled).sum())

    def setup(self, training: Training) -> None:
        import torch

        from hoitool.nn.anticipation import AnticipationObjective

        settings = self.config["anticipation"]
        self.objective = AnticipationObjective(
            multilabel=training.multilabel,
            lam=settings["lam"],
            loss=settings["loss"],
            direction=settings["direction"],
            penalty=settings["penalty"],
            delta=settings["delta"],
            alpha=settings["alpha"],
            temperature=settings["T"],
            reduction=settings["reduction"],
        )
        device = training.ctx.device
        embeddings, valid = self.teacher_embeddings
        self.teacher_tensors = (torch.from_numpy(embeddings).to(device), torch.from_numpy(valid).to(device))
        self.labelled_tensor = torch.from_numpy(self.labelled).to(device)

    def inputs(self, batch: dict, split: str) -> dict:
        return truncated(batch, *self.frames[split])

    def forward(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        from hoitool.nn.anticipation import forward_with_embeddings
        from hoitool.train.distributed import unwrap

        logits, embeddings, valid = forward_with_embeddings(
            cast("ContextGraphNet", unwrap(model)), batch["nodes"], batch["valid"], batch["boxes"], batch["frame_size"]
        )
        return {"logits": logits, "embeddings": embeddings, "embeddings_valid": valid}

    def terms(self, training, position, batch, outputs, logits):
        index, view = batch["index"], batch["view"] if training.random_view else batch["view"] * 0
        teacher_embeddings, teacher_valid = (table[index, view] for table in self.teacher_tensors)
        student = outputs[position]
        terms = self.objective(
            logits[position],
            batch["target"],
            self.labelled_tensor[index],
            training._distill_target(position, logits, batch),
            student["embeddings"].float(),
            student["embeddings_valid"],
            teacher_embeddings,
            teacher_valid,
        )
        terms.pop("total")
        weights = {"ce": 1.0, "soft": 1.0, "distill": self.objective.lam}
        return terms, weights, [logits[position], student["embeddings"]]

    def run_info(self) -> dict:
        return {"name": self.name, **self.config["anticipation"]}

    def label(self, kind: str, view: str, teacher_view: str | None) -> str:
        settings = self.config["anticipation"]
        loss = "L_direct" if settings["loss"] == "direct" else "L_d"
        return f"anticipation τ={settings['lead_time']} {loss} ({teacher_view}-teacher → {view})"


def check_lead_time_run(info: dict, run_dir: Path) -> str:
    """The run's method name, if ``eval --lead-time`` can score it (its model rebuilt from ``best.pt`` alone)."""
    name = method_info(info)["name"]
    if name not in LEAD_TIME_METHODS:
        raise UsageError(f"{run_dir}: eval --lead-time scores {' or '.join(LEAD_TIME_METHODS)} runs, not a {name} run")
    return name


def evaluate_lead_times(run_dir: Path, leads: list[str], split: str = "test", out_dir: Path | None = None) -> dict:
    """Score a finished run's ``best.pt`` on the ``split`` videos cut at each lead time; write ``lead_times_<split>.json``.

    The inputs are cut as an anticipation run's student sees them (:func:`truncated`); views are
    fused by the max of their probabilities, as ``eval``. Any run can be scored so (a recognition
    teacher at lead times shows what anticipation training adds). Returns the record.
    """
    import torch

    from hoitool.eval.fusion import fuse_views, probabilities
    from hoitool.eval.metrics import accuracy, sklearn_style_map
    from hoitool.io.atomic import write_json
    from hoitool.manifest import Manifest
    from hoitool.nn.anticipation import parse_lead_time
    from hoitool.runs import EVAL_DIR, best_checkpoint, read_run_info, saved_config
    from hoitool.store import open_store
    from hoitool.train.checkpoint import load_checkpoint
    from hoitool.train.data import VideoDataset, batches, make_loader, split_videos
    from hoitool.train.methods import get_method

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    name = check_lead_time_run(info, run_dir)
    parsed = [parse_lead_time(text) for text in leads]  # every lead checked before any work
    best_path = best_checkpoint(run_dir)
    if not best_path.is_file():
        raise UsageError(f"{run_dir}: no {best_path.relative_to(run_dir)} (has the run finished?)")
    config = saved_config(run_dir) or {}
    reader = open_store(info["features"])
    if reader.fingerprint != info.get("features_fingerprint"):
        raise UsageError(f"{info['features']}: the features store changed since {run_dir} was trained")
    manifest = Manifest.load((config.get("data") or {}).get("manifest") or reader.manifest_path)
    videos = split_videos(manifest, reader.video_ids, split)
    if not len(videos):
        raise UsageError(f"{info['features']}: holds no videos of the {split!r} split")
    best = load_checkpoint(best_path)
    method = get_method(name)(config)
    model = method.build_model(best["model_config"], best["in_dim"], best["num_classes"])
    model.load_state_dict(best["model"])
    model.eval()
    loader = make_loader(VideoDataset(reader, videos), 0, False, 0, batch_size=16, persistent=False)
    results = {}
    for text, lead in zip(leads, parsed, strict=True):
        end, tau = _frames(manifest, videos.video_ids, lead)
        rows, ids, targets = [], [], []
        with torch.no_grad():
            for batch in batches(loader):
                logits = method.forward(model, truncated(batch, end, tau))["logits"].float()
                rows.append(logits.numpy())
                ids.append(np.asarray(videos.video_ids, dtype=object)[batch["index"].numpy()].astype(str))
                targets.append(videos.one_hot()[batch["index"].numpy()])
        fused_ids, scores, fused_targets, _ = fuse_views(
            np.concatenate(ids), probabilities(np.concatenate(rows), videos.multilabel), np.concatenate(targets), "max"
        )
        if videos.multilabel:
            value, metric = sklearn_style_map(scores, fused_targets)[0], "map_sklearn"
        else:
            value, metric = accuracy(scores, fused_targets.argmax(axis=1)), "accuracy"
        results[str(lead)] = {"lead_time": text, metric: value, "videos": int(len(fused_ids))}
    record = {
        "run": str(run_dir.resolve()),
        "split": split,
        "method": method_info(info),
        "trained_lead_time": method_info(info).get("lead_time"),
        "lead_times": results,
    }
    out_dir = Path(out_dir) if out_dir is not None else run_dir / EVAL_DIR
    write_json(out_dir / f"lead_times_{split}.json", record)
    return record


def lead_time_record(path: Path) -> dict:
    """A written ``lead_times_<split>.json`` (for report and tests)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
