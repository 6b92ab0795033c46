"""Anticipation by distillation (Tran et al., "Knowledge distillation for human action anticipation").

A frozen recognition network R (the teacher) sees the clip up to time ``t``; the anticipation
network A (the student) sees it only up to ``t - tau`` and learns the label at ``t``:

* :func:`attentional_pool` -- Eq. 3-5's operator ``phi(a, R) = R softmax(alpha R^T a)`` over
  the valid nodes of ``R`` (padding gets zero weight), ``alpha = 1/sqrt(d)`` by default;
* :func:`attentional_distill_loss` -- ``L_d(A, R) = L~(A, R) + L~(R, A)`` (Eq. 3), each
  direction alone (Eq. 4 / Eq. 5), squared L2 or Huber (delta = 1, the paper's experiments);
* :func:`direct_distill_loss` -- the ``L_direct = ||A - R||^2`` ablation (slot to slot);
* :class:`AnticipationObjective` -- Eq. 1-2: labels where they exist, the teacher's soft
  predictions on unlabelled videos, plus ``lambda * L_d`` on every video;
* :func:`forward_with_embeddings` -- a :class:`ContextGraphNet`'s logits *and* its node
  embeddings after the graph layers (the ``A-bar`` / ``R-bar`` of Eq. 2);
* :func:`parse_lead_time`, :func:`observe_until`, :func:`lead_time_pair`, :func:`label_at`, :func:`event_times` --
  the lead-time truncation as pure functions over the arrays of one features-store view;
  :func:`lead_time_frames` and :func:`truncate_batch` -- the same on a training batch (what
  ``--method anticipation`` feeds the student);
* :func:`scores_at_lead_times` -- a model's scores on the truncated inputs at each lead time asked for;
* :func:`unlabelled_videos` -- the set U of Eq. 1, from the manifest or a list of ids.

Every loss returns one value per sample (``(B,)``), like ``hoitool.losses``.
See docs/method-anticipation.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hoitool.errors import UsageError
from hoitool.losses import binary_kd_loss, kd_loss, supervised_loss
from hoitool.nn.models import ContextGraphNet

PENALTIES = ("l2", "huber")
DIRECTIONS = ("both", "student", "teacher")
REDUCTIONS = ("sum", "mean")


# -- node embeddings after the graph layers -------------------------------------------------------


def forward_with_embeddings(
    model: ContextGraphNet | torch.nn.Module,
    nodes: torch.Tensor,
    valid: torch.Tensor,
    boxes: torch.Tensor | None = None,
    frame_size: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits (B, C), embeddings (B, T*K, hidden), valid (B, T*K))`` of one forward pass.

    The same computation as ``model(nodes, valid, boxes, frame_size)`` (the logits are equal),
    also returning the node embeddings after the graph layers, flattened frame-major
    (``n = t*K + k``, as the graph models number nodes), for the distillation of Eq. 2.
    ``model`` is a :class:`ContextGraphNet` or a wrapper of one (DDP): the pass goes through its
    ``forward(..., return_embeddings=True)``, so DDP's gradient all-reduce sees it.
    """
    logits, flat, flat_valid = model(nodes, valid, boxes, frame_size, return_embeddings=True)
    return logits, flat, flat_valid


# -- attentional pooling (Eq. 3-5) ----------------------------------------------------------------


def default_alpha(dim: int) -> float:
    """The paper's default ``alpha = 1/sqrt(d)`` (d = channels of the feature map)."""
    return 1.0 / math.sqrt(dim)


def attentional_pool(
    queries: torch.Tensor,
    keys: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    alpha: float | None = None,
) -> torch.Tensor:
    """``phi(q_i, R) = sum_k w_ik r_k`` with ``w_i = softmax_k(alpha r_k . q_i)`` over the valid keys.

    queries (B, M, d), keys (B, N, d), key_valid (B, N) bool -> (B, M, d). Padding keys get
    weight exactly zero; a sample without any valid key pools to zeros. ``alpha -> 0`` is the
    average of the valid keys, a large ``alpha`` picks the key most similar to the query.
    """
    if queries.shape[-1] != keys.shape[-1]:
        raise ValueError(
            f"attentional pooling needs equal widths, got queries {queries.shape[-1]} and keys {keys.shape[-1]}"
        )
    if alpha is None:
        alpha = default_alpha(keys.shape[-1])
    scores = alpha * torch.matmul(queries, keys.transpose(1, 2))  # (B, M, N)
    if key_valid is None:
        return torch.matmul(torch.softmax(scores, dim=-1), keys)
    blocked = ~key_valid.bool().unsqueeze(1)
    # Finite fill (not -inf) keeps rows without any valid key finite; zeroing afterwards removes them.
    weights = torch.softmax(scores.masked_fill(blocked, torch.finfo(scores.dtype).min), dim=-1)
    return torch.matmul(weights.masked_fill(blocked, 0.0), keys)


def _penalty(difference: torch.Tensor, penalty: str, delta: float) -> torch.Tensor:
    """Elementwise penalty summed over the channel axis: ``||x||^2`` or Huber (``0.5 x^2`` inside ``delta``)."""
    if penalty == "l2":
        return difference.pow(2).sum(dim=-1)
    if penalty == "huber":
        return F.huber_loss(difference, torch.zeros_like(difference), reduction="none", delta=delta).sum(dim=-1)
    raise ValueError(f"unknown penalty {penalty!r} (known: {', '.join(PENALTIES)})")


def _reduce(per_node: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, M) per-node values over the valid nodes -> (B,): their sum (the paper) or mean."""
    masked = per_node * valid.to(per_node.dtype)
    if reduction == "sum":
        return masked.sum(dim=1)
    if reduction == "mean":
        return masked.sum(dim=1) / valid.sum(dim=1).clamp(min=1).to(per_node.dtype)
    raise ValueError(f"unknown reduction {reduction!r} (known: {', '.join(REDUCTIONS)})")


def one_way_distill_loss(
    own: torch.Tensor,
    own_valid: torch.Tensor,
    other: torch.Tensor,
    other_valid: torch.Tensor,
    alpha: float | None = None,
    penalty: str = "l2",
    delta: float = 1.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """``L~(O, X) = sum_i pen(phi(o_i, X) - phi(o_i, O))`` over the valid vectors ``o_i`` of ``own`` (Eq. 4 with O = A, X = R)."""
    pooled_other = attentional_pool(own, other, other_valid, alpha)
    pooled_own = attentional_pool(own, own, own_valid, alpha)
    return _reduce(_penalty(pooled_other - pooled_own, penalty, delta), own_valid.bool(), reduction)


def attentional_distill_loss(
    student: torch.Tensor,
    student_valid: torch.Tensor,
    teacher: torch.Tensor,
    teacher_valid: torch.Tensor,
    alpha: float | None = None,
    penalty: str = "l2",
    delta: float = 1.0,
    direction: str = "both",
    reduction: str = "sum",
) -> torch.Tensor:
    """``L_d(A, R)`` of Eq. 3 per sample (B,); A = student (B, N_a, d), R = teacher (B, N_r, d), masks (B, N).

    ``direction``: ``both`` (Eq. 3), ``student`` (Eq. 4 only: the student's vectors query both maps),
    ``teacher`` (Eq. 5 only). The teacher is detached (it is frozen). ``reduction``: ``sum`` over the
    query vectors (the paper's Eq. 4-5) or their ``mean`` (independent of the number of nodes).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r} (known: {', '.join(DIRECTIONS)})")
    teacher = teacher.detach().to(student.dtype)
    student_valid, teacher_valid = student_valid.bool(), teacher_valid.bool()
    total = torch.zeros(student.shape[0], dtype=student.dtype, device=student.device)
    if direction in ("both", "student"):
        total = total + one_way_distill_loss(
            student, student_valid, teacher, teacher_valid, alpha, penalty, delta, reduction
        )
    if direction in ("both", "teacher"):
        total = total + one_way_distill_loss(
            teacher, teacher_valid, student, student_valid, alpha, penalty, delta, reduction
        )
    return total


def direct_distill_loss(
    student: torch.Tensor,
    student_valid: torch.Tensor,
    teacher: torch.Tensor,
    teacher_valid: torch.Tensor,
    penalty: str = "l2",
    delta: float = 1.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """``L_direct = ||A - R||^2`` slot by slot (the ablation), over the slots valid in both maps.

    It assumes node ``n`` of the student and of the teacher are the same box slot (same store view);
    slots the student cannot see (cut by the lead time) have no partner and are left out.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"L_direct needs maps of one shape, got student {tuple(student.shape)} and teacher {tuple(teacher.shape)}"
        )
    both = student_valid.bool() & teacher_valid.bool()
    return _reduce(_penalty(student - teacher.detach().to(student.dtype), penalty, delta), both, reduction)


# -- the objective of Eq. 1-2 ---------------------------------------------------------------------


@dataclass(frozen=True)
class AnticipationObjective:
    """``sum_S L_c(A(x_{t-tau}), y_t) + sum_U L_c(A(x_{t-tau}), R(x_t)) + lambda sum_{S+U} L_d`` (Eq. 1-2).

    ``__call__`` returns per-sample terms ``{"ce", "soft", "distill", "total"}``: ``ce`` on the labelled
    samples (0 elsewhere), ``soft`` on the unlabelled ones (the teacher's soft predictions only:
    KL for single-label, the per-class binary KL for multi-label, both at ``temperature``; 0 on the
    labelled ones), ``distill`` = ``L_d`` (or ``L_direct`` with ``loss="direct"``) on every sample.
    """

    multilabel: bool
    lam: float = 1.0
    loss: str = "attention"  # "attention" (Eq. 3-5) or "direct" (the ablation)
    direction: str = "both"
    penalty: str = "huber"
    delta: float = 1.0
    alpha: float | None = None
    temperature: float = 1.0
    reduction: str = "sum"

    def __call__(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        labelled: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_embeddings: torch.Tensor,
        student_valid: torch.Tensor,
        teacher_embeddings: torch.Tensor,
        teacher_valid: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        labelled = labelled.bool()
        safe_targets = torch.where(labelled.view(-1, *([1] * (targets.dim() - 1))), targets, torch.zeros_like(targets))
        ce = supervised_loss(logits, safe_targets, self.multilabel) * labelled
        soft_fn = binary_kd_loss if self.multilabel else kd_loss
        soft = soft_fn(logits, teacher_logits.detach(), self.temperature) * ~labelled
        if self.loss == "attention":
            distill = attentional_distill_loss(
                student_embeddings,
                student_valid,
                teacher_embeddings,
                teacher_valid,
                alpha=self.alpha,
                penalty=self.penalty,
                delta=self.delta,
                direction=self.direction,
                reduction=self.reduction,
            )
        elif self.loss == "direct":
            distill = direct_distill_loss(
                student_embeddings,
                student_valid,
                teacher_embeddings,
                teacher_valid,
                penalty=self.penalty,
                delta=self.delta,
                reduction=self.reduction,
            )
        else:
            raise ValueError(f"unknown anticipation distillation loss {self.loss!r} (known: attention, direct)")
        distill = distill.float()
        return {"ce": ce, "soft": soft, "distill": distill, "total": ce + soft + self.lam * distill}


# -- lead time: which sampled frames the student may see ------------------------------------------


@dataclass(frozen=True)
class LeadTime:
    """A lead time ``tau``: in seconds, or as a fraction of the video (for datasets without times).

    ``fraction=0.8`` cuts the last 80 % of the video: the student sees the first 20 % of the frames,
    the JHMDB protocol of the paper (Sec. 3.2).
    """

    seconds: float | None = None
    fraction: float | None = None

    def __post_init__(self):
        if (self.seconds is None) == (self.fraction is None):
            raise UsageError("a lead time is either seconds or a fraction of the video, exactly one of them")
        if self.seconds is not None and not (math.isfinite(self.seconds) and self.seconds >= 0):
            raise UsageError(f"lead time must be >= 0 seconds, got {self.seconds!r}")
        if self.fraction is not None and not 0.0 <= self.fraction < 1.0:
            raise UsageError(f"lead time as a fraction of the video must be in [0, 1), got {self.fraction!r}")

    def frames(self, fps: float | None, num_frames: int | None, video: str = "video") -> float:
        """The lead time in decoded frames for one video (needs its fps, or its frame count for a fraction)."""
        if self.seconds is not None:
            if not fps or fps <= 0:
                raise UsageError(
                    f"{video}: a lead time in seconds needs the video's fps, which the manifest lacks; "
                    "give the lead time as a fraction of the video (e.g. 80%) instead"
                )
            return self.seconds * fps
        if not num_frames or num_frames <= 0:
            raise UsageError(
                f"{video}: a lead time as a fraction needs the video's frame count, which the manifest lacks"
            )
        return float(self.fraction or 0.0) * num_frames

    def __str__(self) -> str:
        return f"{self.seconds:g}s" if self.seconds is not None else f"{float(self.fraction or 0.0) * 100:g}%"


_LEAD = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[-+]?[0-9]+)?)\s*(s|%)?\s*$", re.IGNORECASE)


def parse_lead_time(text: str) -> LeadTime:
    """``"1.5"`` or ``"1.5s"`` -> 1.5 seconds; ``"80%"`` -> the last 80 % of the video cut."""
    match = _LEAD.match(str(text))
    if not match:
        raise UsageError(
            f"lead time {text!r}: expected seconds (e.g. 1.5 or 1.5s) or a percentage of the video (e.g. 80%)"
        )
    value = float(match.group(1))
    if match.group(2) == "%":
        return LeadTime(fraction=value / 100.0)
    return LeadTime(seconds=value)


def observe_until(view: dict[str, np.ndarray], last_frame: float) -> dict[str, np.ndarray]:
    """One store view with every sampled frame after decoded frame ``last_frame`` masked out.

    ``view`` holds the arrays of one view of a features store (``frame_indices (T,)``,
    ``frame_valid (T,)``, ``valid (T, K)``, ``nodes (T, K, D)``, optional ``boxes``/``frame_features``);
    the result is a copy where those frames are invalid (``frame_valid``/``valid`` False) and their
    nodes, boxes and frame features zeroed, so nothing of the hidden future reaches a model, even one
    that ignores masks. A view with every frame cut has no valid node (the models pool it to zeros).
    """
    frame_indices = np.asarray(view["frame_indices"])
    keep = np.asarray(view["frame_valid"], dtype=bool) & (frame_indices <= last_frame)
    out = dict(view)
    out["frame_valid"] = keep
    out["valid"] = np.asarray(view["valid"], dtype=bool) & keep[:, None]
    for name in ("nodes", "boxes", "frame_features"):
        if name in view:
            array = np.array(view[name], copy=True)
            array[~keep] = 0
            out[name] = array
    return out


def lead_time_pair(
    view: dict[str, np.ndarray],
    lead: LeadTime,
    fps: float | None,
    num_frames: int | None,
    t: float | None = None,
    video: str = "video",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``(student view, teacher view)``: the student sees frames ``<= t - tau``, the teacher frames ``<= t``.

    ``t`` is a decoded frame index (default: the video's last frame, ``num_frames - 1``, or the last
    sampled frame when the frame count is unknown). ``tau`` is ``lead`` in frames of this video.
    """
    if t is None:
        if num_frames:
            t = num_frames - 1
        else:
            sampled = np.asarray(view["frame_indices"])[np.asarray(view["frame_valid"], dtype=bool)]
            t = float(sampled.max()) if sampled.size else 0.0
    return observe_until(view, t - lead.frames(fps, num_frames, video)), observe_until(view, t)


def lead_time_frames(video, lead: LeadTime) -> tuple[float, float]:
    """``(t, tau)`` of one manifest video in decoded frames: ``t`` its last frame (NaN when the manifest
    lacks the frame count: then the last sampled frame is ``t``), ``tau`` the lead time."""
    end = float(video.num_frames - 1) if video.num_frames else math.nan
    return end, lead.frames(video.fps, video.num_frames, video.id)


def truncate_batch(batch: dict[str, torch.Tensor], end: torch.Tensor, tau: torch.Tensor) -> dict[str, torch.Tensor]:
    """A training batch as the student sees it: every sampled frame after ``t - tau`` masked out and zeroed.

    The batched form of :func:`observe_until` (equal to it view by view): ``batch`` holds ``nodes (B, T, K, D)``,
    ``valid (B, T, K)``, ``boxes (B, T, K, 4)`` and ``frame_indices (B, T)`` (decoded frame per sampled frame,
    -1 for padding); ``end``/``tau`` (B,) the frames of :func:`lead_time_frames` (``end`` NaN: the last
    valid sampled frame). The other entries are passed on unchanged.
    """
    frames = batch["frame_indices"]
    sampled = batch["valid"].any(dim=-1) & (frames >= 0)
    last_sampled = torch.where(sampled, frames, torch.full_like(frames, -1)).amax(dim=1).to(end.dtype)
    end = torch.where(torch.isnan(end), last_sampled, end)
    keep = (frames >= 0) & (frames.to(end.dtype) <= (end - tau)[:, None])  # (B, T)
    out = dict(batch)
    out["valid"] = batch["valid"].bool() & keep[..., None]
    for name in ("nodes", "boxes"):
        out[name] = torch.where(keep[..., None, None], batch[name], torch.zeros_like(batch[name]))
    return out


def label_at(segments: list, frame: float, default=None):
    """The label of the segment holding decoded frame ``frame``; ``default`` between segments.

    ``segments`` are ``[start, end, label]`` with inclusive 0-based frame indices (CAD-120's
    ``extra.segments`` in the manifest); on overlaps the segment that starts last wins.
    """
    found, found_start = default, -math.inf
    for start, end, label in segments:
        if start <= frame <= end and start >= found_start:
            found, found_start = label, start
    return found


def event_times(video) -> list[float]:
    """The event times ``t`` of one manifest video, decoded frame indices, sorted, each once.

    ``t`` is the **last frame of each annotated event**, so the teacher at ``t`` has seen the whole
    action and the action's interval still holds ``t`` (its label is the label at ``t``):

    * Charades ``extra.actions`` ``[class, start_s, end_s]``: frame ``floor(end_s * fps)`` (needs ``fps``);
    * CAD-120 ``extra.segments`` ``[start, end, label]`` (0-based inclusive frames): ``end``;
    * the synthetic set's ``extra.turns`` ``[{"frames": [start, end), ...}]`` (end exclusive): ``end - 1``.

    Times are clipped to the video's last frame where the manifest has its frame count. A video
    without any of them has no events (``[]``: the caller uses its end). A malformed annotation is a
    UsageError naming the video.
    """
    extra = video.extra or {}
    found: list[float] = []
    try:
        if extra.get("actions"):
            if not video.fps:
                raise UsageError(
                    f"video {video.id!r}: its action intervals are in seconds but the manifest has no fps "
                    "(anticipation.at=events needs it)"
                )
            found += [math.floor(float(end) * float(video.fps)) for _, _, end in extra["actions"]]
        found += [float(end) for _, end, _ in extra.get("segments") or []]
        found += [float(turn["frames"][1]) - 1 for turn in extra.get("turns") or [] if "frames" in turn]
    except (TypeError, ValueError, KeyError, IndexError):
        raise UsageError(
            f"video {video.id!r}: malformed time annotation in the manifest's extra "
            "(actions [class, start_s, end_s], segments [start, end, label], turns [{'frames': [start, end]}])"
        ) from None
    last = float(video.num_frames - 1) if video.num_frames else math.inf
    return sorted({min(max(float(t), 0.0), last) for t in found})


def scores_at_lead_times(predict, samples, leads: list[LeadTime]) -> dict[str, np.ndarray]:
    """Class scores of every sample at every lead time, for ``eval`` of an anticipation run.

    ``samples`` yields ``(video id, view, fps, num_frames, t)`` (``t`` None: the video's end);
    ``predict(view) -> (C,)`` scores one truncated view (the student's input at that lead time).
    Returns ``{str(lead): (N, C) scores}`` in sample order; score them with ``hoitool.eval.metrics``.
    """
    samples = list(samples)
    out = {}
    for lead in leads:
        rows = [
            np.asarray(predict(lead_time_pair(view, lead, fps, num_frames, t, video)[0]))
            for video, view, fps, num_frames, t in samples
        ]
        out[str(lead)] = np.stack(rows) if rows else np.zeros((0, 0))
    return out


# -- which videos are unlabelled (the set U of Eq. 1) ---------------------------------------------


def unlabelled_videos(videos, listed: Path | str | None = None) -> set[str]:
    """Ids of the videos trained on the teacher's soft predictions only.

    A manifest video is unlabelled when its ``extra`` says ``"unlabelled": true`` or when its id is
    in ``listed``, a text file of video ids (one per line; blank lines and ``#`` comments skipped).
    An id in the list that the manifest lacks is a UsageError naming the file and the line.
    """
    known = {video.id for video in videos}
    found = {video.id for video in videos if (video.extra or {}).get("unlabelled") is True}
    if listed is None:
        return found
    path = Path(listed)
    if not path.is_file():
        raise UsageError(f"{path}: list of unlabelled videos not found")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        video = line.split("#", 1)[0].strip()
        if not video:
            continue
        if video not in known:
            raise UsageError(f"{path}:{number}: video {video!r} is not in the manifest")
        found.add(video)
    return found
