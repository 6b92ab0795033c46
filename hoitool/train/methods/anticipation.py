"""``--method anticipation``: anticipation by distillation (Tran et al.) as a ``distill`` method.

The student sees each video only up to ``t - tau`` (``anticipation.lead_time``), the frozen teacher
(a ``train-teacher`` run) the clip up to ``t``. ``anticipation.at``: ``end`` -- ``t`` is the video's
last frame and the teacher's stored outputs and node embeddings are read; ``events`` -- ``t`` is the
end of each annotated event, one drawn per video and epoch, every one scored, and the teacher's
``best.pt`` runs online on the clip cut at ``t`` (:mod:`hoitool.train.methods.anticipation_events`).
The student learns (Eq. 1-2, :class:`hoitool.nn.anticipation.AnticipationObjective`):

* ``ce`` -- the labels (at ``t`` where the manifest has them), on the labelled videos;
* ``soft`` -- the teacher's soft predictions (its logits), on the unlabelled videos
  (manifest ``extra.unlabelled: true`` or ``anticipation.unlabelled``, a file of ids);
* ``distill`` (weight ``lam``) -- ``L_d`` of Eq. 3-5 between the student's and the teacher's node
  embeddings after the graph layers (at ``end`` the teacher's ``embeddings.npz``,
  :mod:`hoitool.train.methods.embeddings`, refused when stale), or the ``L_direct`` ablation.

The student's forward goes through the (DDP-)wrapped model, so the method trains under ``torchrun``.

Validation and the run's outputs use the same truncated input; :func:`evaluate_lead_times` scores a
finished run at other lead times (``hoitool eval RUN --lead-time ...``). docs/method-anticipation.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hoitool import log
from hoitool.errors import UsageError
from hoitool.train.methods import Method, method_info, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hoitool.train.loop import Training


def _frames(manifest, video_ids: list[str], lead) -> tuple[np.ndarray, np.ndarray]:
    """``(t, tau)`` in decoded frames for each video (the manifest's fps / frame count; one line if missing)."""
    from hoitool.nn.anticipation import lead_time_frames

    by_id = manifest.by_id()
    pairs = [lead_time_frames(by_id[video], lead) for video in video_ids]
    return np.array([p[0] for p in pairs], dtype=np.float64), np.array([p[1] for p in pairs], dtype=np.float64)


def label_at_end(video, classes: list[str], multilabel: bool) -> list[int] | None:
    """The classes of ``video`` at ``t`` = its last frame where the manifest has them; None: use its labels
    (:func:`hoitool.train.methods.anticipation_events.label_at_time`)."""
    from hoitool.train.methods.anticipation_events import label_at_time

    if not video.num_frames:
        return None
    return label_at_time(video, video.num_frames - 1, classes, multilabel)


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
    if "frame_indices" not in batch:
        raise UsageError("anticipation needs each sampled frame's decoded index (frame_indices) in the batch")
    index = batch["index"].cpu().numpy()
    return cut(batch, end[index], tau[index])


def cut(batch: dict, end: np.ndarray, tau: np.ndarray) -> dict:
    """``batch`` with row ``i`` cut at ``end[i] - tau[i]`` (:func:`hoitool.nn.anticipation.truncate_batch`)."""
    import torch

    from hoitool.nn.anticipation import truncate_batch

    device = batch["nodes"].device
    as_tensor = lambda values: torch.as_tensor(values, dtype=torch.float64, device=device)  # noqa: E731
    return truncate_batch(batch, as_tensor(end), as_tensor(tau))


@register_method("anticipation")
class Anticipation(Method):
    """Tran et al.'s anticipation by distillation on a ``distill --teacher RUN`` run (see the module docstring)."""

    kinds = ("student",)

    def check(self, training: Training) -> None:
        super().check(training)
        from hoitool.nn.anticipation import parse_lead_time, unlabelled_videos

        settings = self.config["anticipation"]
        if not settings["lead_time"]:
            raise UsageError("--method anticipation needs --lead-time (seconds, e.g. 1.5s, or a fraction, e.g. 80%)")
        self.lead = parse_lead_time(settings["lead_time"])
        self.at = settings["at"]
        self.training = training  # the sampler's epoch decides each train video's event (at: events)
        unlabelled = unlabelled_videos(training.manifest.videos, settings["unlabelled"])
        train_ids = training.videos["train"].video_ids
        self.labelled = np.array([video not in unlabelled for video in train_ids])
        if not self.labelled.any():
            raise UsageError("every train video is unlabelled: anticipation needs some labels (Eq. 1's S)")
        self.unlabelled_count = int((~self.labelled).sum())
        if self.at == "events":
            self._check_events(training, settings["labels"])
            return
        from hoitool.train.methods.embeddings import load_teacher_embeddings

        if settings["labels"] == "at_t":
            changed = labels_at_t(training)  # train, val selection and the outputs all score the label at t
            if changed:
                log.info(f"anticipation: {changed} video(s) labelled by what happens at t (their last frame)")
        self.frames = {
            split: _frames(training.manifest, videos.video_ids, self.lead) for split, videos in training.videos.items()
        }
        views = training.num_views if training.random_view else 1
        self.teacher_embeddings = load_teacher_embeddings(
            training.teacher_dir, training.reader.fingerprint, train_ids, views, training.request.force
        )

    def _check_events(self, training: Training, labels: str) -> None:
        """``at: events``: every split's samples at its videos' event times; val/test expanded; the teacher's best.pt."""
        from hoitool.io.digest import file_sha256
        from hoitool.train.methods.anticipation_events import load_frozen_teacher, split_events, with_events_reader

        self.events = {
            split: split_events(training.manifest, videos, self.lead, labels)
            for split, videos in training.videos.items()
        }
        for split in ("val", "test"):  # scored per event: one row per (video, t), named VIDEO@FRAME
            events = self.events[split]
            training.reader = with_events_reader(training.reader, events.aliases(training.videos[split]))
            training.videos[split] = events.expanded(training.videos[split])
        self.frames = {split: (self.events[split].t, self.events[split].tau) for split in ("val", "test")}
        self.teacher_model, path = load_frozen_teacher(
            training.teacher_dir, training.in_dim, training.manifest.num_classes
        )
        self.teacher_checkpoint = (str(path.resolve()), file_sha256(path))
        counts = {
            split: f"{len(events)} samples of {len(events.counts)} videos" for split, events in self.events.items()
        }
        log.info(f"anticipation at event times: {', '.join(f'{k} {v}' for k, v in counts.items())}")

    def upstream(self) -> dict[str, str]:
        """``at: events`` runs the teacher's best.pt: a resume on a changed one is refused (StaleArtifactError)."""
        from hoitool.io.digest import short_digest

        if getattr(self, "at", None) != "events":
            return {}
        path, sha = self.teacher_checkpoint
        return {f"teacher checkpoint {path}": short_digest(sha)}

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
        if self.at == "events":
            self.teacher_model.to(device)
        else:
            embeddings, valid = self.teacher_embeddings
            self.teacher_tensors = (torch.from_numpy(embeddings).to(device), torch.from_numpy(valid).to(device))
        self.labelled_tensor = torch.from_numpy(self.labelled).to(device)

    def train_rows(self, epoch: int) -> np.ndarray:
        """(N,) the sample each train video trains on in ``epoch`` (:func:`draw_events`; cached per epoch)."""
        from hoitool.train.methods.anticipation_events import draw_events

        cached = getattr(self, "_drawn", None)
        if cached is None or cached[0] != epoch:
            events = self.events["train"]
            cached = (epoch, events.offsets + draw_events(events.counts, self.config["train"]["seed"], epoch))
            self._drawn = cached
        return cached[1]

    def inputs(self, batch: dict, split: str) -> dict:
        if self.at == "end" or split != "train":
            return truncated(batch, *self.frames[split])  # val/test: one row per event already
        import torch

        from hoitool.nn.anticipation import forward_with_embeddings

        grad = torch.is_grad_enabled()  # a training step; the outputs (no_grad) take the last epoch's draw
        epoch = self.training.sampler.epoch if grad else self.training.epochs
        events = self.events["train"]
        rows = self.train_rows(epoch)[batch["index"].cpu().numpy()]
        student = cut(batch, events.t[rows], events.tau[rows])
        student["target"] = torch.as_tensor(events.targets[rows], device=batch["target"].device)
        if grad:  # the frozen teacher on the clip cut at t (Eq. 1's R(x_t), Eq. 2's R-bar)
            seen = cut(batch, events.t[rows], np.zeros(len(rows)))
            with torch.no_grad():
                logits, embeddings, valid = forward_with_embeddings(
                    self.teacher_model, seen["nodes"], seen["valid"], seen["boxes"], seen["frame_size"]
                )
            student.update(teacher_logits=logits.float(), teacher_embeddings=embeddings.float(), teacher_valid=valid)
        return student

    def forward(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        from hoitool.nn.anticipation import forward_with_embeddings

        # Through the (DDP-)wrapped module's own forward, so DDP's gradient all-reduce sees the pass.
        logits, embeddings, valid = forward_with_embeddings(
            model, batch["nodes"], batch["valid"], batch["boxes"], batch["frame_size"]
        )
        return {"logits": logits, "embeddings": embeddings, "embeddings_valid": valid}

    def terms(self, training, position, batch, outputs, logits):
        if self.at == "events":
            teacher_logits = batch["teacher_logits"]
            teacher_embeddings, teacher_valid = batch["teacher_embeddings"], batch["teacher_valid"]
        else:
            index, view = batch["index"], batch["view"] if training.random_view else batch["view"] * 0
            teacher_embeddings, teacher_valid = (table[index, view] for table in self.teacher_tensors)
            teacher_logits = training._distill_target(position, logits, batch)
        student = outputs[position]
        terms = self.objective(
            logits[position],
            batch["target"],
            self.labelled_tensor[batch["index"]],
            teacher_logits,
            student["embeddings"].float(),
            student["embeddings_valid"],
            teacher_embeddings,
            teacher_valid,
        )
        terms.pop("total")
        weights = {"ce": 1.0, "soft": 1.0, "distill": self.objective.lam}
        return terms, weights, [logits[position], student["embeddings"]]

    def run_info(self) -> dict:
        info = {"name": self.name, **self.config["anticipation"]}
        if getattr(self, "at", None) == "events":
            info["teacher_checkpoint"] = {"path": self.teacher_checkpoint[0], "sha256": self.teacher_checkpoint[1]}
        return info

    def label(self, kind: str, view: str, teacher_view: str | None) -> str:
        settings = self.config["anticipation"]
        loss = "L_direct" if settings["loss"] == "direct" else "L_d"
        where = " at events" if settings.get("at") == "events" else ""
        return f"anticipation τ={settings['lead_time']}{where} {loss} ({teacher_view}-teacher → {view})"


def check_lead_time_run(info: dict, run_dir: Path) -> str:
    """The run's method name, if ``eval --lead-time`` can score it (its model rebuilt from ``best.pt`` alone)."""
    from hoitool.train.methods.anticipation_events import LEAD_TIME_METHODS

    name = method_info(info)["name"]
    if name not in LEAD_TIME_METHODS:
        raise UsageError(f"{run_dir}: eval --lead-time scores {' or '.join(LEAD_TIME_METHODS)} runs, not a {name} run")
    return name


def evaluate_lead_times(
    run_dir: Path, leads: list[str], split: str = "test", out_dir: Path | None = None, at: str | None = None
) -> dict:
    """Score a finished run's ``best.pt`` on the ``split`` videos cut at each lead time; write ``lead_times_<split>.json``.

    The inputs are cut as an anticipation run's student sees them (:func:`truncated`); views are
    fused by the max of their probabilities, as ``eval``. Any run can be scored so (a recognition
    teacher at lead times shows what anticipation training adds). ``at`` (default: the run's own
    ``anticipation.at``, ``end`` for other runs): ``end`` scores each video at its last frame with its
    label; ``events`` scores every event of every video as a sample (``VIDEO@FRAME``) with the label at
    ``t`` (:mod:`hoitool.train.methods.anticipation_events`). Returns the record.
    """
    import torch

    from hoitool.eval.fusion import fuse_views, probabilities
    from hoitool.eval.metrics import accuracy, sklearn_style_map
    from hoitool.io.atomic import write_json
    from hoitool.manifest import Manifest
    from hoitool.nn.anticipation import parse_lead_time
    from hoitool.runs import EVAL_DIR, best_checkpoint, read_run_info, saved_config
    from hoitool.store import open_store
    from hoitool.train.data import VideoDataset, batches, make_loader, split_videos
    from hoitool.train.methods.anticipation_events import AT, rebuild_best, split_events, with_events_reader

    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    name = check_lead_time_run(info, run_dir)
    parsed = [parse_lead_time(text) for text in leads]  # every lead checked before any work
    at = at or method_info(info).get("at") or "end"
    if at not in AT:
        raise UsageError(f"--anticipate-at must be one of {', '.join(AT)}, got {at!r}")
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
    labels = (config.get("anticipation") or {}).get("labels", "at_t")
    samples = {str(lead): split_events(manifest, videos, lead, labels) for lead in parsed} if at == "events" else {}
    model, method, _ = rebuild_best(run_dir, name, best_path)
    results = {}
    for text, lead in zip(leads, parsed, strict=True):
        scored, source = videos, reader
        if at == "events":  # one row per (video, t): the same samples at every lead time, only tau differs
            events = samples[str(lead)]
            scored, source = events.expanded(videos), with_events_reader(reader, events.aliases(videos))
            end, tau = events.t, events.tau
        else:
            end, tau = _frames(manifest, videos.video_ids, lead)
        loader = make_loader(VideoDataset(source, scored), 0, False, 0, batch_size=16, persistent=False)
        rows, ids, targets, empty = [], [], [], 0
        with torch.no_grad():
            for batch in batches(loader):
                seen = truncated(batch, end, tau)
                empty += int((~seen["valid"].flatten(1).any(dim=1)).sum())
                rows.append(method.forward(model, seen)["logits"].float().numpy())
                ids.append(np.asarray(scored.video_ids, dtype=object)[batch["index"].numpy()].astype(str))
                targets.append(scored.one_hot()[batch["index"].numpy()])
        fused_ids, scores, fused_targets, _ = fuse_views(
            np.concatenate(ids), probabilities(np.concatenate(rows), videos.multilabel), np.concatenate(targets), "max"
        )
        if videos.multilabel:
            value, metric = sklearn_style_map(scores, fused_targets)[0], "map_sklearn"
        else:
            value, metric = accuracy(scores, fused_targets.argmax(axis=1)), "accuracy"
        results[str(lead)] = {
            "lead_time": text,
            metric: value,
            "videos": int(len(videos)),
            "samples": int(len(fused_ids)),
            "empty_inputs": empty,  # (sample, view) rows whose cut left no sampled frame (a constant guess)
        }
    record = {
        "run": str(run_dir.resolve()),
        "split": split,
        "method": method_info(info),
        "trained_lead_time": method_info(info).get("lead_time"),
        "at": at,
        "lead_times": results,
    }
    out_dir = Path(out_dir) if out_dir is not None else run_dir / EVAL_DIR
    write_json(out_dir / f"lead_times_{split}.json", record)
    return record


def lead_time_record(path: Path) -> dict:
    """A written ``lead_times_<split>.json`` (for report and tests)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
