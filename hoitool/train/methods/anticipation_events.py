"""``anticipation.at: events``: the lead-time samples at annotated times inside a video, and the online teacher.

With ``at: end`` a video is one sample, ``t`` its last frame. With ``at: events`` its samples are its
*event times* (:func:`hoitool.nn.anticipation.event_times`: the last frame of each annotated action,
segment or turn; a video without any: its end), each with the label at ``t``:

* :func:`split_events` -- every ``(video, t)`` sample of a split with its ``tau`` and target (validation,
  the run's outputs and ``eval --lead-time`` score each as a sample, named ``VIDEO@FRAME``);
* :func:`draw_events` -- which event each train video trains on in an epoch: a pure function of
  ``(train.seed, epoch, video)``, like the views of ``data.random_view``, so a resume replays it;
* :class:`EventReader` -- the features store read under the samples' ``VIDEO@FRAME`` names;
* :func:`load_frozen_teacher` -- the teacher run's ``best.pt`` model, frozen, that sees the clip cut
  at ``t`` during training (its stored outputs are of the whole clip). docs/method-anticipation.md.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hoitool.errors import UsageError

if TYPE_CHECKING:
    from torch import nn

    from hoitool.train.data import SplitVideos

AT = ("end", "events")
DRAW_SALT = 0x7A7  # keeps the event draw's stream apart from the sampler's (seed, epoch) stream
LEAD_TIME_METHODS = (
    "glidn",
    "anticipation",
)  # ContextGraphNet models, rebuilt from best.pt alone; forward returns node embeddings


def label_at_time(video, frame: float, classes: list[str], multilabel: bool) -> list[int] | None:
    """The classes of ``video`` at decoded frame ``frame`` where the manifest has them; None: use its labels.

    Charades' ``extra.actions`` (``[class, start, end]`` seconds): the actions whose interval holds
    ``frame / fps`` (multi-label; possibly none). ``extra.segments`` (``[start, end, label]`` frames)
    whose labels are the manifest's class names: the segment at ``frame``. CAD-120's segments name
    sub-activities and the synthetic set's turns name no class, so those videos keep their label.
    """
    from hoitool.nn.anticipation import label_at

    extra = video.extra or {}
    if multilabel and extra.get("actions") and video.fps:
        t = frame / video.fps
        return sorted({int(c) for c, start, stop in extra["actions"] if start <= t <= stop})
    segments = extra.get("segments") or []
    if segments and all(str(label) in classes for _, _, label in segments):
        found = label_at(segments, frame)
        return None if found is None else [classes.index(str(found))]
    return None


def target_row(labels: list[int] | None, fallback: np.ndarray, multilabel: bool, num_classes: int) -> np.ndarray:
    """One target (class index, or multi-hot) from the labels at ``t``; ``fallback`` (the video's) where there are none."""
    if labels is None or (not multilabel and not labels):
        return np.asarray(fallback).copy()
    if multilabel:
        hot = np.zeros(num_classes, dtype=np.asarray(fallback).dtype)
        hot[labels] = 1
        return hot
    return np.asarray(labels[0], dtype=np.asarray(fallback).dtype)


@dataclass
class SplitEvents:
    """The ``(video, t)`` samples of one split, in video order then time order."""

    position: np.ndarray  # (S,) int64: the video's position in the split
    t: np.ndarray  # (S,) float64 decoded frame; NaN: the last sampled frame (no frame count, no events)
    tau: np.ndarray  # (S,) float64 lead time in frames
    targets: np.ndarray  # (S,) int64 or (S, C) float32: the label at t
    ids: list[str]  # (S,) 'VIDEO@FRAME' ('VIDEO@end' for a NaN t)
    counts: np.ndarray  # (N,) samples per video (>= 1)
    offsets: np.ndarray  # (N,) first sample of each video

    def __len__(self) -> int:
        return len(self.ids)

    def expanded(self, videos: SplitVideos) -> SplitVideos:
        """``videos`` with one row per sample (ids ``VIDEO@FRAME``, targets at ``t``): what val/test score."""
        return dataclasses.replace(
            videos,
            video_ids=list(self.ids),
            targets=self.targets,
            objects=None if videos.objects is None else videos.objects[self.position],
            view_targets=None if videos.view_targets is None else videos.view_targets[self.position],
        )

    def aliases(self, videos: SplitVideos) -> dict[str, str]:
        """``{'VIDEO@FRAME': 'VIDEO'}`` for :class:`EventReader`."""
        return {name: videos.video_ids[int(p)] for name, p in zip(self.ids, self.position, strict=True)}


def event_id(video: str, t: float) -> str:
    return f"{video}@end" if math.isnan(t) else f"{video}@{int(t)}"


def split_events(manifest, videos: SplitVideos, lead, labels: str = "at_t") -> SplitEvents:
    """Every event of every video of ``videos`` as a sample; ``labels`` ``at_t`` or ``video`` (anticipation.labels)."""
    from hoitool.nn.anticipation import event_times, lead_time_frames

    by_id, classes = manifest.by_id(), list(manifest.classes)
    position, times, taus, targets, ids, counts = [], [], [], [], [], []
    for row, video_id in enumerate(videos.video_ids):
        video = by_id[video_id]
        end, tau = lead_time_frames(video, lead)
        found = event_times(video) or [end]
        counts.append(len(found))
        for t in found:
            position.append(row)
            times.append(t)
            taus.append(tau)
            ids.append(event_id(video_id, t))
            at_t = None if labels != "at_t" or math.isnan(t) else label_at_time(video, t, classes, videos.multilabel)
            targets.append(target_row(at_t, videos.targets[row], videos.multilabel, videos.num_classes))
    counts_array = np.asarray(counts, dtype=np.int64)
    return SplitEvents(
        position=np.asarray(position, dtype=np.int64),
        t=np.asarray(times, dtype=np.float64),
        tau=np.asarray(taus, dtype=np.float64),
        targets=np.stack(targets) if targets else videos.targets[:0],
        ids=ids,
        counts=counts_array,
        offsets=np.concatenate(([0], np.cumsum(counts_array)[:-1])).astype(np.int64),
    )


def draw_events(counts: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """(N,) which of its events each video trains on in ``epoch``: a pure function of ``(seed, epoch, video)``.

    Video ``p``'s draw is ``floor(u_p * count_p)`` with ``u_p`` the ``p``-th uniform of a generator
    seeded by ``(seed, epoch)`` alone: no global RNG is touched, so a resumed epoch draws the same.
    """
    uniform = np.random.default_rng([int(seed), int(epoch), DRAW_SALT]).random(len(counts))
    counts = np.asarray(counts, dtype=np.int64)
    return np.minimum((uniform * counts).astype(np.int64), counts - 1)


class EventReader:
    """A features-store reader that serves ``VIDEO@FRAME`` samples from ``VIDEO`` (everything else passed on)."""

    def __init__(self, reader, aliases: dict[str, str]):
        self.inner, self.aliases = reader, aliases

    def read(self, video_id: str, *args, **kwargs):
        return self.inner.read(self.aliases.get(video_id, video_id), *args, **kwargs)

    def __getattr__(self, name: str):
        if name in ("inner", "aliases"):  # not set yet (unpickling in a DataLoader worker)
            raise AttributeError(name)
        return getattr(self.inner, name)


def with_events_reader(reader, aliases: dict[str, str]):
    """``reader`` able to read the aliases too (an :class:`EventReader` gains them rather than nesting)."""
    if isinstance(reader, EventReader):
        return EventReader(reader.inner, {**reader.aliases, **aliases})
    return EventReader(reader, aliases)


def load_frozen_teacher(teacher_dir: Path, in_dim: int, num_classes: int) -> tuple[nn.Module, Path]:
    """The teacher run's ``best.pt`` model in eval mode with no gradients, rebuilt as ``eval --lead-time`` rebuilds one."""
    from hoitool.runs import best_checkpoint, read_run_info
    from hoitool.train.methods import method_info

    teacher_dir = Path(teacher_dir)
    name = method_info(read_run_info(teacher_dir))["name"]
    if name not in LEAD_TIME_METHODS:
        raise UsageError(
            f"{teacher_dir}: anticipation.at=events runs the teacher online; it must be a "
            f"{' or '.join(LEAD_TIME_METHODS)} run, not a {name} run"
        )
    path = best_checkpoint(teacher_dir)
    if not path.is_file():
        raise UsageError(f"{teacher_dir}: no {path.name} (anticipation.at=events runs the teacher's best.pt)")
    model, _, best = rebuild_best(teacher_dir, name, path)
    if best["in_dim"] != in_dim or best["num_classes"] != num_classes:
        raise UsageError(
            f"{path}: the teacher takes {best['in_dim']}-d nodes and {best['num_classes']} classes, "
            f"this store and manifest have {in_dim} and {num_classes}"
        )
    model.requires_grad_(False)
    return model, path


def rebuild_best(run_dir: Path, name: str, path: Path):
    """``(model, method, checkpoint)``: the ``name`` run's ``best.pt`` at ``path`` in its model, in eval mode.

    The one rebuild of a finished run's model from its checkpoint and saved config, for ``eval
    --lead-time`` and for the frozen teacher of ``at: events``.
    """
    from hoitool.runs import saved_config
    from hoitool.train.checkpoint import load_checkpoint
    from hoitool.train.methods import get_method

    best = load_checkpoint(path)
    method = get_method(name)(saved_config(run_dir) or {})
    model = method.build_model(best["model_config"], best["in_dim"], best["num_classes"])
    model.load_state_dict(best["model"])
    model.eval()
    return model, method, best
