"""Cross-level contrastive distillation from a vision-language teacher (CL-HOI, Gao et al.), adapted to video.

The paper distils a VLLM's *image-level* captions and <interaction, object> triplets into an
*instance-level* HOI detector. Its equations are given only in prose in our copy, so the forms below
are our reading of that prose, written out in docs/method-cl-hoi.md; in hoitool the "image" is a video
and the instances are the human-object node pairs of its frames.

* :func:`symmetric_info_nce` -- context distillation (Eq. 7): in-batch InfoNCE between the student's
  video embeddings and the caption embeddings, both directions averaged.
* :func:`i2t_loss` (Eq. 8) -- the video's interaction feature (the mean of its pair features) against
  each positive interaction embedding, contrasted with the video's negative interactions.
* :func:`t2i_loss` (Eq. 9) -- each positive interaction text against the videos of the batch (a video's
  score is its best-matching pair), the videos lacking that interaction being the negatives.
* :func:`soft_relation_targets` / :func:`soft_relation_loss` (A.3, Eq. 11-16) -- pseudo-labels for each
  pair and positive interaction from region and text similarities; BCE of the pairs' interaction scores.
* :func:`label_free_targets` -- interaction labels only from the teacher: each teacher interaction
  mapped to its nearest class name (cosine of text embeddings, above a threshold).
* :class:`PairHead` -- the instance-level head: one embedding per (human node, object node) pair of a
  frame, from both nodes and their box geometry, scored against interaction text embeddings.
* :class:`ClHoiNet` -- a graph model with a video projection into the text space and a pair head over
  its node embeddings after the graph layers (what ``--method cl_hoi`` trains).

All losses take embeddings of any scale (they are L2-normalised inside) and return one value per
video, ``(B,)``, like ``hoitool.losses``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hoitool.nn.models import ContextGraphNet, masked_pool

GEOMETRY_DIM = 5


def cosine_logits(x: torch.Tensor, bank: torch.Tensor, temperature: float) -> torch.Tensor:
    """``cos(x, bank_c) / temperature`` for every row of ``x`` (..., d) and of ``bank`` (C, d) -> (..., C)."""
    return torch.matmul(F.normalize(x.float(), dim=-1), F.normalize(bank.float(), dim=-1).T) / temperature


def _fill(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` where ``keep``, else the most negative finite value (a finite fill keeps gradients NaN-free)."""
    return x.masked_fill(~keep, torch.finfo(x.dtype).min)


# -- context distillation -------------------------------------------------------------------------


def symmetric_info_nce(
    video: torch.Tensor, text: torch.Tensor, temperature: float = 0.07, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """``0.5 * (CE(s_i., i) + CE(s_.i, i))`` with ``s_ij = cos(video_i, text_j) / temperature``, per sample (B,).

    ``valid`` (B,) leaves out samples without a caption: they are neither anchors (loss 0) nor negatives.
    Swapping ``video`` and ``text`` gives the same values. Two videos with one caption text are still
    each other's negatives (the in-batch convention of CLIP).
    """
    logits = cosine_logits(video, text, temperature)
    keep = torch.ones(len(logits), dtype=torch.bool, device=logits.device) if valid is None else valid.bool()
    target = torch.arange(len(logits), device=logits.device)
    rows = keep[:, None]  # rows of samples without a caption are blanked (then dropped); their columns never count

    def one_way(s: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            torch.where(rows, _fill(s, keep[None, :]), torch.zeros_like(s)), target, reduction="none"
        )

    v2t, t2v = one_way(logits), one_way(logits.T)
    return torch.where(keep, 0.5 * (v2t + t2v), torch.zeros_like(v2t))


# -- interaction distillation ---------------------------------------------------------------------


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, M, d) over the valid rows (B, M) -> (B, d); zeros for a video without valid rows."""
    mask = valid.unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1)


def _positive_mean(terms: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean of (B, C) terms over each video's positives; 0 for a video without any."""
    terms = torch.where(positive, terms, torch.zeros_like(terms))
    return terms.sum(1) / positive.sum(1).clamp(min=1)


def i2t_loss(
    video: torch.Tensor, bank: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Image -> text: ``mean_{p in P_i} -log(e^{s_ip} / (e^{s_ip} + sum_{n in N_i} e^{s_in}))``, ``s = cos / temperature``.

    video (B, d) the video-level interaction features (the mean of its pair features), bank (C, d) the
    interaction text embeddings, positive/negative (B, C) bool (the teacher's interactions, the sampled
    negatives). Each positive competes only with the negatives, not with the other positives.
    """
    s = cosine_logits(video, bank, temperature)
    negatives = torch.logsumexp(_fill(s, negative.bool()), dim=1, keepdim=True)  # ~ -inf without negatives
    terms = torch.logaddexp(s, negatives) - s
    return _positive_mean(terms, positive.bool())


def best_pair_logits(
    pairs: torch.Tensor, pair_valid: torch.Tensor, bank: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(max over valid pairs of cos(pair, bank_c) / temperature (B, C), has_pairs (B,))``; 0 where no pair."""
    logits = cosine_logits(pairs, bank, temperature)  # (B, M, C)
    best = _fill(logits, pair_valid.bool().unsqueeze(-1)).amax(dim=1)
    has_pairs = pair_valid.bool().any(dim=1)
    return torch.where(has_pairs[:, None], best, torch.zeros_like(best)), has_pairs


def t2i_loss(
    pairs: torch.Tensor, pair_valid: torch.Tensor, bank: torch.Tensor, positive: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Text -> image: for each positive interaction ``c`` of video ``i``, ``-log(e^{g_ic} / (e^{g_ic} + sum_j e^{g_jc}))``.

    ``g_jc`` is video ``j``'s best pair for text ``c`` (max over its valid pairs of cos / temperature);
    the ``j`` are the videos of the batch that have pairs and lack interaction ``c``. Per video: the
    mean over its positives (0 without positives or pairs).
    """
    g, has_pairs = best_pair_logits(pairs, pair_valid, bank, temperature)
    return t2i_from_scores(g, has_pairs, positive)


def t2i_from_scores(g: torch.Tensor, has_pairs: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """:func:`t2i_loss` from the videos' best-pair scores ``g (B, C)`` (:func:`best_pair_logits`) and ``has_pairs (B,)``.

    The in-batch part on its own: under DDP the scores of the whole global batch are gathered first.
    """
    positive = positive.bool() & has_pairs.bool()[:, None]
    others = torch.logsumexp(_fill(g, ~positive & has_pairs.bool()[:, None]), dim=0, keepdim=True)  # (1, C)
    terms = torch.logaddexp(g, others) - g
    return _positive_mean(terms, positive)


def soft_relation_targets(
    pair_valid: torch.Tensor,
    positive: torch.Tensor,
    regions: torch.Tensor | None = None,
    verbs: torch.Tensor | None = None,
    objects: torch.Tensor | None = None,
    object_valid: torch.Tensor | None = None,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Pseudo-labels ``y (B, M, C)`` in [0, 1]: which pair does each of the video's interactions (A.3).

    With ``regions`` (B, M, d) -- embeddings of each pair's union box in the text space (e.g. a CLIP image
    tower over the crop) -- ``verbs`` (C, d) and the triplets' ``objects`` (B, C, d) with ``object_valid``
    (B, C): ``s = cos(region, verb)`` averaged with ``cos(region, object)`` where the triplet names one;
    ``q = softmax over the valid pairs of s / temperature``; ``y = q / max_m q`` (the best pair gets 1).
    Without ``regions``, every valid pair gets 1 for every positive (the image-level label copied to
    each instance). Non-positive interactions and padding pairs get 0.
    """
    valid = pair_valid.bool().unsqueeze(-1) & positive.bool().unsqueeze(1)  # (B, M, C)
    if regions is None:
        return valid.float()
    if verbs is None:
        raise ValueError("soft-relation targets from region embeddings need the verb embeddings too")
    region = F.normalize(regions.float(), dim=-1)
    score = torch.matmul(region, F.normalize(verbs.float(), dim=-1).T)  # (B, M, C)
    if objects is not None and object_valid is not None:
        with_object = torch.einsum("bmd,bcd->bmc", region, F.normalize(objects.float(), dim=-1))
        has = object_valid.bool().unsqueeze(1)
        score = torch.where(has, 0.5 * (score + with_object), score)
    share = torch.softmax(_fill(score / temperature, pair_valid.bool().unsqueeze(-1)), dim=1)
    share = torch.nan_to_num(share, nan=0.0)  # a video without pairs: all -inf
    targets = share / share.amax(dim=1, keepdim=True).clamp(min=1e-12)
    return torch.where(valid, targets, torch.zeros_like(targets))


def soft_relation_loss(
    pairs: torch.Tensor,
    pair_valid: torch.Tensor,
    bank: torch.Tensor,
    targets: torch.Tensor,
    columns: torch.Tensor,
    temperature: float = 0.07,
) -> torch.Tensor:
    """``mean BCE(sigmoid(cos(pair_m, bank_c) / temperature), y_mc)`` over valid pairs and the video's columns (Eq. 15-16).

    ``columns`` (B, C) bool: the interactions scored for each video (its positives and negatives).
    """
    logits = cosine_logits(pairs, bank, temperature)
    keep = (pair_valid.bool().unsqueeze(-1) & columns.bool().unsqueeze(1)).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets.float(), reduction="none")
    return (bce * keep).sum(dim=(1, 2)) / keep.sum(dim=(1, 2)).clamp(min=1)


class Gather(Protocol):
    """The whole global batch of a data-parallel step: ``gather(x (B, ...)) -> (N, ...)``, this rank's ``rows`` (B,)."""

    rows: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class ContrastiveObjective:
    """``total = w_context*context + w_i2t*i2t + w_t2i*t2i + w_sr*sr`` per video; each term with its temperature.

    ``__call__`` returns the per-video terms; a term whose weight is 0 is not computed (reported as 0,
    still tied to the outputs so that every parameter gets a gradient, as DDP needs).
    The in-batch terms (context, t2i) contrast a video with the other videos of the batch: ``gather``
    (:class:`Gather`) makes that the global batch of all ranks (with gradient), and each rank keeps
    its own rows; ``real`` (B,) False marks padding samples (a rank's zero-weight dummy), which are
    neither anchors nor negatives.
    """

    w_context: float = 1.0
    w_i2t: float = 1.0
    w_t2i: float = 1.0
    w_sr: float = 1.0
    t_context: float = 0.07
    t_interaction: float = 0.07
    t_sr: float = 0.07

    def __call__(
        self,
        video: torch.Tensor,
        captions: torch.Tensor,
        caption_valid: torch.Tensor,
        pairs: torch.Tensor,
        pair_valid: torch.Tensor,
        bank: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        sr_targets: torch.Tensor | None = None,
        real: torch.Tensor | None = None,
        gather: Gather | None = None,
    ) -> dict[str, torch.Tensor]:
        zero = 0.0 * (video.float().sum(-1) + pairs.float().sum(dim=(1, 2)))  # 0, on the outputs' graph
        terms = {"context": zero, "i2t": zero, "t2i": zero, "sr": zero}
        real = torch.ones(len(video), dtype=torch.bool, device=video.device) if real is None else real.bool()
        if self.w_context:
            keep = caption_valid.bool() & real
            if gather is None:
                terms["context"] = symmetric_info_nce(video, captions, self.t_context, keep)
            else:
                every = symmetric_info_nce(gather(video), gather(captions), self.t_context, gather(keep))
                terms["context"] = every[gather.rows]
        if self.w_i2t:
            terms["i2t"] = i2t_loss(masked_mean(pairs, pair_valid), bank, positive, negative, self.t_interaction)
        if self.w_t2i:
            g, has_pairs = best_pair_logits(pairs, pair_valid, bank, self.t_interaction)
            has_pairs = has_pairs & real
            if gather is None:
                terms["t2i"] = t2i_from_scores(g, has_pairs, positive)
            else:
                terms["t2i"] = t2i_from_scores(gather(g), gather(has_pairs), gather(positive.bool()))[gather.rows]
        if self.w_sr:
            targets = sr_targets if sr_targets is not None else soft_relation_targets(pair_valid, positive)
            terms["sr"] = soft_relation_loss(
                pairs, pair_valid, bank, targets, positive.bool() | negative.bool(), self.t_sr
            )
        terms["total"] = (
            self.w_context * terms["context"]
            + self.w_i2t * terms["i2t"]
            + self.w_t2i * terms["t2i"]
            + self.w_sr * terms["sr"]
        )
        return terms


# -- label-free targets ---------------------------------------------------------------------------


def label_free_targets(
    teacher: torch.Tensor,
    teacher_valid: torch.Tensor,
    classes: torch.Tensor,
    threshold: float = 0.8,
    multilabel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class targets from the teacher's interactions alone: ``(targets, labelled (B,))``.

    teacher (B, P, d) the text embeddings of each video's teacher interactions (or pairs), teacher_valid
    (B, P), classes (C, d) the embeddings of the class names (same encoder). Each teacher interaction
    votes for its nearest class when their cosine is at least ``threshold`` (an identical text has
    cosine 1). Multi-label: multi-hot (B, C) of the voted classes. Single-label: the class of the most
    similar vote (B,), ``-1`` for a video without any vote. ``labelled`` marks the videos with a vote.
    """
    cos = torch.matmul(F.normalize(teacher.float(), dim=-1), F.normalize(classes.float(), dim=-1).T)  # (B, P, C)
    best, nearest = cos.max(dim=-1)  # (B, P)
    votes = teacher_valid.bool() & (best >= threshold)
    labelled = votes.any(dim=1)
    if multilabel:
        hot = torch.zeros(cos.shape[0], cos.shape[2], device=cos.device)
        hot.scatter_add_(1, nearest, votes.float())
        return (hot > 0).float(), labelled
    strongest = torch.where(votes, best, torch.full_like(best, -2.0)).argmax(dim=1)
    chosen = nearest.gather(1, strongest[:, None]).squeeze(1)
    return torch.where(labelled, chosen, torch.full_like(chosen, -1)), labelled


# -- the instance-level head ----------------------------------------------------------------------


def pair_geometry(boxes: torch.Tensor) -> torch.Tensor:
    """(..., K, 4) xyxy -> (..., K, K, 5) for human ``i``, object ``j``: ``dx/w_i, dy/h_i, log w_j/w_i, log h_j/h_i, IoU``.

    Scale free (relative to the human's box), as CL-HOI's spatial cues; widths and heights are clamped
    to one pixel so padding boxes (zeros) stay finite.
    """
    x1, y1, x2, y2 = boxes.float().unbind(-1)
    w, h = (x2 - x1).clamp(min=1.0), (y2 - y1).clamp(min=1.0)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    dx = (cx[..., None, :] - cx[..., :, None]) / w[..., :, None]
    dy = (cy[..., None, :] - cy[..., :, None]) / h[..., :, None]
    lw = torch.log(w[..., None, :] / w[..., :, None])
    lh = torch.log(h[..., None, :] / h[..., :, None])
    ix = (torch.minimum(x2[..., :, None], x2[..., None, :]) - torch.maximum(x1[..., :, None], x1[..., None, :])).clamp(
        min=0
    )
    iy = (torch.minimum(y2[..., :, None], y2[..., None, :]) - torch.maximum(y1[..., :, None], y1[..., None, :])).clamp(
        min=0
    )
    inter = ix * iy
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    union = (area[..., :, None] + area[..., None, :] - inter).clamp(min=1e-6)
    return torch.stack([dx, dy, lw, lh, inter / union], dim=-1)


class PairHead(nn.Module):
    """One embedding per (human, object) node pair of a frame: ``MLP([h_i; h_j; geometry_ij])``.

    The first layer on the concatenation is computed as ``W_h h_i + W_o h_j + W_g g_ij`` (the same map,
    without building the concatenation). Pairs are ordered ``(t, i, j)``; a pair is valid when node ``i``
    is a valid person, node ``j`` a valid non-person, in the same frame; invalid pairs are zero vectors.
    """

    def __init__(self, node_dim: int, embed_dim: int, hidden: int = 256):
        super().__init__()
        self.human = nn.Linear(node_dim, hidden, bias=False)
        self.object = nn.Linear(node_dim, hidden, bias=False)
        self.geometry = nn.Linear(GEOMETRY_DIM, hidden)
        self.out = nn.Sequential(nn.ReLU(), nn.Linear(hidden, embed_dim))

    def forward(
        self, nodes: torch.Tensor, valid: torch.Tensor, is_person: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """nodes (B, T, K, D), valid/is_person (B, T, K) bool, boxes (B, T, K, 4) -> (pairs (B, T*K*K, E), valid (B, T*K*K))."""
        x = nodes.to(self.human.weight.dtype)
        hidden = (
            self.human(x)[:, :, :, None]
            + self.object(x)[:, :, None, :]
            + self.geometry(pair_geometry(boxes).to(x.dtype))
        )
        valid, is_person = valid.bool(), is_person.bool()
        pair_valid = ((valid & is_person)[..., :, None] & (valid & ~is_person)[..., None, :]).flatten(1)
        hidden = hidden.flatten(1, 3)
        # The output layer only for valid pairs (a frame has few persons: most of the K*K are not pairs).
        pairs = hidden.new_zeros(*pair_valid.shape, self.out[-1].out_features)
        pairs[pair_valid] = self.out(hidden[pair_valid])
        return pairs, pair_valid


def video_scores(
    pairs: torch.Tensor, pair_valid: torch.Tensor, bank: torch.Tensor, temperature: float = 0.07
) -> torch.Tensor:
    """Video-level class scores (B, C): the best pair per class (the instance head evaluated as a video classifier)."""
    return best_pair_logits(pairs, pair_valid, bank, temperature)[0]


class ClHoiNet(nn.Module):
    """A :class:`hoitool.nn.models.ContextGraphNet` plus a video projection and a :class:`PairHead` (``--method cl_hoi``).

    ``forward`` gives the graph model's logits (so outputs and ``eval`` are unchanged); :meth:`outputs`
    (or ``forward(..., outputs=True)``, so that a DDP wrapper sees the pass) also the video embedding in the text space (B, E) and, given ``is_person`` (B, T, K), the pairs of
    the node embeddings after the graph layers (B, T*K*K, E) with their mask.
    """

    def __init__(self, base: ContextGraphNet, text_dim: int, pair_hidden: int = 64):
        super().__init__()
        hidden = base.classifier.in_features
        self.base = base
        self.video = nn.Linear(hidden, text_dim)
        self.pairs = PairHead(hidden, text_dim, pair_hidden)

    def outputs(self, nodes, valid, boxes=None, frame_size=None, is_person=None) -> dict[str, torch.Tensor]:
        valid = valid.bool()
        h = self.base.relate(self.base.embed(nodes, boxes, frame_size), valid)  # (B, T, K, hidden)
        pooled = masked_pool(h.flatten(1, 2), valid.flatten(1), self.base.pooling)
        out = {"logits": self.base.classifier(pooled), "video": self.video(pooled)}
        if is_person is not None:
            out["pairs"], out["pair_valid"] = self.pairs(h, valid, is_person, boxes)
        return out

    def forward(self, nodes, valid, boxes=None, frame_size=None, is_person=None, outputs: bool = False):
        """The logits (B, C); with ``outputs=True`` the dict of :meth:`outputs` (what training calls through DDP)."""
        out = self.outputs(nodes, valid, boxes, frame_size, is_person)
        return out if outputs else out["logits"]


def dense_pair_targets(
    entries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None],
    frames: int,
    slots: int,
    classes: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Per-sample pseudo-labels on a video's own pairs -> ``(B, frames*slots*slots, classes)`` on the batch's pairs.

    ``entries[b]`` is ``(pairs (P, 3) (frame, person slot, object slot), columns (Cp,), targets (P, Cp))``
    or None (no pseudo-labels: 0). Pair ``(t, i, j)`` is :class:`PairHead`'s pair ``(t*slots + i)*slots + j``
    of the batch (padded to ``frames`` x ``slots``), so the labels do not depend on the batch's padding.
    """
    out = torch.zeros(len(entries), frames * slots * slots, classes, device=device)
    for row, entry in enumerate(entries):
        if entry is None:
            continue
        pairs, columns, targets = (part.to(device) for part in entry)
        if not len(pairs) or not len(columns):
            continue
        pairs, columns = pairs.long(), columns.long()  # stored small (int16), indexed as int64
        flat = (pairs[:, 0] * slots + pairs[:, 1]) * slots + pairs[:, 2]
        out[row, flat[:, None], columns[None, :]] = targets.float()
    return out
