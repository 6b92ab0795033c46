"""Dual attention over actions and objects (Xiao et al., "Reasoning about human-object interactions
through dual attention networks").

regions (B, T, N, D) -- a frame's graph nodes (N = K box slots) or its feature-map cells (N = h*w) --
-> dropout -> Linear(D, hidden) + ReLU (the paper's single-layer projection)
-> first stage: the mean over a frame's valid regions (Eq. 1) -> an action head and an object head
   (each the mean over frames + a two-layer MLP (Eq. 5), or a multi-scale TRN (Eq. 3-4))
-> priors: the first-stage probabilities through two-layer MLPs, ``h^a`` and ``h^o``
-> dual attention (Eq. 6-9): ``alpha_k = softmax(w_a^T tanh(W_a f_k + W_ota h^o))`` over the frame's
   valid regions (object prior -> action attention) and ``beta_k`` likewise from ``h^a``
-> attended frame features (Eq. 10-11) -> second-stage heads (not shared with the first).

Objects: ``object_slots`` softmax classifiers (two in the paper, for "put something on something"),
each over the object classes plus a null label (index ``num_objects``) for actions with fewer objects.
See docs/method-dual-attention.md.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hoitool.errors import UsageError
from hoitool.losses import supervised_loss
from hoitool.nn.standardize import FeatureStandardization

TEMPORAL = ("mean", "trn")
IGNORE = -1  # an object slot without a label (the dataset has no object names for the video)


def _mlp(in_dim: int, hidden: int, out_dim: int, last_relu: bool = False) -> nn.Sequential:
    layers = [nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim)]
    return nn.Sequential(*layers, nn.ReLU()) if last_relu else nn.Sequential(*layers)


def masked_mean(x: torch.Tensor, valid: torch.Tensor, dim: int) -> torch.Tensor:
    """Mean of ``x`` over ``dim`` where ``valid``; zeros where nothing is valid."""
    mask = valid.unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis restricted to ``valid``: padding gets exactly 0; all-padding rows are all 0."""
    blocked = ~valid
    weights = torch.softmax(scores.masked_fill(blocked, torch.finfo(scores.dtype).min), dim=-1)
    return weights.masked_fill(blocked, 0.0)


# -- temporal heads -------------------------------------------------------------------------------


class MeanHead(nn.Module):
    """Mean over the valid frames (Eq. 5) then a two-layer MLP (the paper's TSN/TSM head)."""

    def __init__(self, in_dim: int, num_outputs: int, hidden: int = 256):
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, num_outputs)

    def forward(self, frames: torch.Tensor, frame_valid: torch.Tensor) -> torch.Tensor:
        """frames (B, T, D), frame_valid (B, T) -> (B, num_outputs)."""
        return self.mlp(masked_mean(frames, frame_valid, dim=1))


def nth_combination(items: int, order: int, rank: int) -> tuple[int, ...]:
    """The ``rank``-th (0-based) ``order``-subset of ``range(items)`` in lexicographic order, without listing them."""
    chosen: list[int] = []
    start = 0
    for slot in range(order):
        while True:
            with_start = math.comb(items - start - 1, order - slot - 1)  # subsets that take ``start`` next
            if rank < with_start:
                chosen.append(start)
                start += 1
                break
            rank -= with_start
            start += 1
    return tuple(chosen)


def trn_tuples(num_frames: int, order: int, max_tuples: int) -> list[tuple[int, ...]]:
    """The ordered frame tuples ``k_1 < ... < k_n`` one scale sums over (Eq. 3).

    All of them when there are at most ``max_tuples``; otherwise ``max_tuples`` evenly spaced ranks
    (``floor(i (C - 1) / (max_tuples - 1))``) in lexicographic order (deterministic, where TRN draws them at random; the paper: "a small number
    of tuples uniformly sampled"), found by rank so 32 frames never list C(32, 16) tuples.
    """
    total = math.comb(num_frames, order)
    if total <= max_tuples:
        return list(itertools.combinations(range(num_frames), order))
    ranks = [i * (total - 1) // max(max_tuples - 1, 1) for i in range(max_tuples)]  # exact integers, first to last
    return [nth_combination(num_frames, order, rank) for rank in ranks]


class TRNHead(nn.Module):
    """Multi-scale temporal relations: ``v = sum_{n=2..N} h_n(sum_{k_1<..<k_n} g_n(f_k1, .., f_kn))`` (Eq. 3-4).

    ``N`` is ``num_frames``, or ``max_order`` when smaller (``DualAttentionNet`` uses 8, the paper's TRN-8).

    ``g_n`` is a two-layer MLP (``hidden`` units, ReLU) over the concatenated frames, ``h_n`` a two-layer
    MLP to the outputs. A tuple with a padding frame is left out; a scale without any valid tuple
    adds nothing.
    """

    def __init__(
        self,
        in_dim: int,
        num_outputs: int,
        num_frames: int,
        hidden: int = 256,
        max_order: int | None = None,
        max_tuples: int = 3,
    ):
        super().__init__()
        if num_frames < 2:
            raise UsageError(f"the TRN head needs at least 2 sampled frames, got {num_frames}")
        self.num_frames = num_frames
        top = num_frames if max_order is None else min(max_order, num_frames)
        self.orders = list(range(2, top + 1))
        self.tuples = [trn_tuples(num_frames, n, max_tuples) for n in self.orders]
        self.g = nn.ModuleList(_mlp(n * in_dim, hidden, hidden, last_relu=True) for n in self.orders)
        self.h = nn.ModuleList(_mlp(hidden, hidden, num_outputs) for _ in self.orders)

    def forward(self, frames: torch.Tensor, frame_valid: torch.Tensor) -> torch.Tensor:
        """frames (B, T, D), frame_valid (B, T) -> (B, num_outputs)."""
        if frames.shape[1] != self.num_frames:
            raise ValueError(f"this TRN head was built for {self.num_frames} frames, got {frames.shape[1]}")
        out = frames.new_zeros(())
        for tuples, g, h in zip(self.tuples, self.g, self.h, strict=False):
            index = torch.tensor(tuples, device=frames.device)  # (P, n)
            stacked = frames[:, index].flatten(2)  # (B, P, n*D)
            tuple_valid = frame_valid[:, index].all(dim=-1)  # (B, P)
            relations = (g(stacked) * tuple_valid.unsqueeze(-1).to(frames.dtype)).sum(dim=1)
            out = out + h(relations) * tuple_valid.any(dim=1, keepdim=True).to(frames.dtype)
        return out


# -- the model ------------------------------------------------------------------------------------


@dataclass
class DualAttentionOutput:
    """Logits of both stages and the attention maps (``alpha``: action, ``beta``: object; (B, T, N))."""

    action_first: torch.Tensor  # (B, A)
    object_first: torch.Tensor  # (B, S, O + 1)
    action: torch.Tensor  # (B, A) second stage: the prediction
    object: torch.Tensor  # (B, S, O + 1)
    alpha: torch.Tensor
    beta: torch.Tensor


class PriorAttention(nn.Module):
    """Eq. 6/8 (or 7/9): ``softmax_i(w^T tanh(W f_k[i] + W_prior h))`` over the valid regions of each frame."""

    def __init__(self, feature_dim: int, prior_dim: int, attention_dim: int):
        super().__init__()
        self.features = nn.Linear(feature_dim, attention_dim, bias=False)
        self.prior = nn.Linear(prior_dim, attention_dim)
        self.score = nn.Linear(attention_dim, 1, bias=False)

    def forward(self, regions: torch.Tensor, valid: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """regions (B, T, N, F), valid (B, T, N), prior (B, P) -> weights (B, T, N)."""
        hidden = torch.tanh(self.features(regions) + self.prior(prior)[:, None, None, :])
        return masked_softmax(self.score(hidden).squeeze(-1), valid)


class DualAttentionNet(nn.Module):
    """Action and object recognition whose first predictions steer each other's attention."""

    def __init__(
        self,
        in_dim: int,
        num_actions: int,
        num_objects: int,
        object_slots: int = 2,
        hidden: int = 512,
        prior_hidden: int = 512,
        attention_dim: int = 512,
        temporal: str = "trn",
        num_frames: int | None = None,
        head_hidden: int = 256,
        trn_max_tuples: int = 3,
        trn_max_order: int | None = 8,
        dropout: float = 0.5,
        multilabel: bool = False,
    ):
        super().__init__()
        if temporal not in TEMPORAL:
            raise UsageError(f"temporal head must be one of {', '.join(TEMPORAL)}, got {temporal!r}")
        if temporal == "trn" and num_frames is None:
            raise UsageError("the TRN temporal head needs the number of sampled frames (num_frames)")
        if not 1 <= object_slots <= 2:
            raise UsageError(f"object_slots must be 1 or 2, got {object_slots!r}")
        self.num_actions, self.num_objects, self.object_slots = num_actions, num_objects, object_slots
        self.multilabel = multilabel
        self.dropout = nn.Dropout(dropout)
        self.standardize = FeatureStandardization()  # data.standardize (node regions): set by the run, none by default
        self.project = nn.Linear(in_dim, hidden)
        object_outputs = object_slots * (num_objects + 1)

        def head(outputs: int) -> nn.Module:
            if num_frames is not None and temporal == "trn":
                return TRNHead(
                    hidden, outputs, num_frames, hidden=head_hidden, max_order=trn_max_order, max_tuples=trn_max_tuples
                )
            return MeanHead(hidden, outputs, hidden=head_hidden)

        self.action_first, self.object_first = head(num_actions), head(object_outputs)
        self.action_second, self.object_second = head(num_actions), head(object_outputs)
        self.action_prior = _mlp(num_actions, prior_hidden, prior_hidden, last_relu=True)
        self.object_prior = _mlp(object_outputs, prior_hidden, prior_hidden, last_relu=True)
        self.action_attention = PriorAttention(hidden, prior_hidden, attention_dim)  # driven by h^o (Eq. 6)
        self.object_attention = PriorAttention(hidden, prior_hidden, attention_dim)  # driven by h^a (Eq. 7)

    def _objects(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.view(flat.shape[0], self.object_slots, self.num_objects + 1)

    def forward(self, regions: torch.Tensor, valid: torch.Tensor) -> DualAttentionOutput:
        """regions (B, T, N, D) (nodes or feature-map cells), valid (B, T, N) bool -> :class:`DualAttentionOutput`."""
        valid = valid.bool()
        regions = self.standardize(regions.to(self.project.weight.dtype))  # padding too, but masked below
        f = F.relu(self.project(self.dropout(regions)))
        frame_valid = valid.any(dim=-1)
        pooled = masked_mean(f, valid, dim=2)  # Eq. 1
        action_first = self.action_first(pooled, frame_valid)
        object_first = self._objects(self.object_first(pooled, frame_valid))
        p_action = torch.sigmoid(action_first) if self.multilabel else torch.softmax(action_first, dim=-1)
        p_object = torch.softmax(object_first, dim=-1).flatten(1)
        h_action, h_object = self.action_prior(p_action), self.object_prior(p_object)
        alpha = self.action_attention(f, valid, h_object)  # Eq. 6, 8: objects tell actions where to look
        beta = self.object_attention(f, valid, h_action)  # Eq. 7, 9
        attended_action = (alpha.unsqueeze(-1) * f).sum(dim=2)  # Eq. 10
        attended_object = (beta.unsqueeze(-1) * f).sum(dim=2)  # Eq. 11
        return DualAttentionOutput(
            action_first=action_first,
            object_first=object_first,
            action=self.action_second(attended_action, frame_valid),
            object=self._objects(self.object_second(attended_object, frame_valid)),
            alpha=alpha,
            beta=beta,
        )


# -- targets, loss, metrics -----------------------------------------------------------------------


def object_vocabulary(object_classes: list[str], video_objects: list[list[str]], slots: int = 2) -> list[str]:
    """The object classes a run predicts: every name some video gives in its first ``slots`` objects.

    In the manifest's ``object_classes`` order when it lists them all (CAD-120 object types, the
    synthetic set's kinds; its box-only labels such as ``person`` left out), else sorted (SSv2
    placeholders and Charades objects are free names). Empty when no video has object labels.
    """
    used = {name for names in video_objects for name in names[:slots]}
    if used <= set(object_classes):
        return [name for name in object_classes if name in used]
    return sorted(used)


def object_slot_targets(
    objects: list[str], object_classes: list[str], slots: int = 2, video: str = "video"
) -> list[int]:
    """A video's object names -> one class index per slot, the null label (``len(object_classes)``) for empty slots.

    Names beyond ``slots`` are dropped (the paper keeps two); an unknown name is a UsageError. A video
    without any object name gets ``IGNORE`` in every slot (no object supervision, rather than "null").
    """
    if not objects:
        return [IGNORE] * slots
    index = {name: i for i, name in enumerate(object_classes)}
    unknown = [name for name in objects[:slots] if name not in index]
    if unknown:
        raise UsageError(f"{video}: object {unknown[0]!r} is not one of the manifest's object_classes")
    null = len(object_classes)
    return [index[name] for name in objects[:slots]] + [null] * (slots - min(slots, len(objects)))


def _object_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the slots (B,), ``IGNORE`` slots left out."""
    per_slot = F.cross_entropy(logits.float().transpose(1, 2), targets.long(), ignore_index=IGNORE, reduction="none")
    return per_slot.sum(dim=1)


def dual_attention_loss(
    output: DualAttentionOutput,
    action_targets: torch.Tensor,
    object_targets: torch.Tensor,
    multilabel: bool = False,
    first_weight: float = 1.0,
    object_weight: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-sample terms (B,): both stages of both tasks, trained end to end.

    ``total = action + first_weight * action_first + object_weight * (object + first_weight * object_first)``;
    each object term is the cross-entropy summed over the slots (null label included, ``IGNORE`` slots out).
    The first stage is supervised too, so that its predictions are meaningful priors.
    """
    terms = {
        "action": supervised_loss(output.action, action_targets, multilabel),
        "action_first": supervised_loss(output.action_first, action_targets, multilabel),
        "object": _object_ce(output.object, object_targets),
        "object_first": _object_ce(output.object_first, object_targets),
    }
    terms["total"] = (
        terms["action"]
        + first_weight * terms["action_first"]
        + object_weight * (terms["object"] + first_weight * terms["object_first"])
    )
    return terms


def object_top1(object_logits: np.ndarray, object_targets: np.ndarray) -> float:
    """Top-1 accuracy over the slots that name a real object (null and unlabelled slots left out); NaN if none."""
    logits = np.asarray(object_logits)
    targets = np.asarray(object_targets)
    null = logits.shape[-1] - 1
    keep = (targets != IGNORE) & (targets != null)
    if not keep.any():
        return float("nan")
    return float(np.mean(logits[keep].argmax(axis=-1) == targets[keep]))


# -- weak localisation: attention maps drawn on the frames ----------------------------------------


def plot_attention_maps(
    path: Path | str,
    alpha: np.ndarray,
    beta: np.ndarray,
    frame_size: tuple[int, int],
    frames: list[np.ndarray] | None = None,
    boxes: np.ndarray | None = None,
    grid: tuple[int, int] | None = None,
    valid: np.ndarray | None = None,
    frame_indices: np.ndarray | None = None,
    title: str = "",
) -> None:
    """One PNG: the frames (row 1) and the action (row 2) and object (row 3) attention drawn on them (Fig. 4).

    ``alpha``/``beta`` (T, N) are one video's maps. Regions are boxes ``(T, N, 4)`` xyxy in source pixels
    (the graph nodes: each box outlined with a width and opacity following its weight) or a feature-map
    ``grid = (h, w)`` with ``N = h*w`` (a heat map over the frame). ``frames`` are the decoded RGB
    frames (uint8 (H, W, 3)); without them the maps are drawn on grey.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from hoitool.io.atomic import atomic_path

    alpha, beta = np.asarray(alpha, dtype=np.float64), np.asarray(beta, dtype=np.float64)
    if (boxes is None) == (grid is None):
        raise ValueError("give the regions as boxes or as a feature-map grid, exactly one of them")
    if grid is not None and grid[0] * grid[1] != alpha.shape[1]:
        raise ValueError(f"grid {grid} has {grid[0] * grid[1]} cells but the maps have {alpha.shape[1]} regions")
    height, width = int(frame_size[0]), int(frame_size[1])
    frames_shown = alpha.shape[0]
    valid = np.ones(alpha.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    figure = Figure(figsize=(2.2 * frames_shown, 2.2 * 3 * height / max(width, 1) + 0.6))
    FigureCanvasAgg(figure)
    grey = np.full((height, width, 3), 127, dtype=np.uint8)
    for t in range(frames_shown):
        image = grey if frames is None else np.asarray(frames[t])
        for row, (name, weights) in enumerate((("frame", None), ("action", alpha[t]), ("object", beta[t]))):
            axes = figure.add_subplot(3, frames_shown, row * frames_shown + t + 1)
            axes.imshow(image, extent=(0, width, height, 0))
            axes.set_xticks([])
            axes.set_yticks([])
            if t == 0:
                axes.set_ylabel(name)
            if row == 0 and frame_indices is not None:
                axes.set_title(f"frame {int(frame_indices[t])}", fontsize=8)
            if weights is None:
                continue
            top = max(float(weights.max()), 1e-12)
            if grid is not None:
                axes.imshow(
                    weights.reshape(grid),
                    extent=(0, width, height, 0),
                    cmap="jet",
                    alpha=0.5,
                    vmin=0.0,
                    vmax=top,
                    interpolation="bilinear",
                )
                continue
            assert boxes is not None  # checked above: boxes or grid
            for n in np.flatnonzero(valid[t]):
                x1, y1, x2, y2 = (float(v) for v in boxes[t, n])
                share = float(weights[n]) / top
                axes.add_patch(
                    Rectangle(
                        (x1, y1),
                        x2 - x1,
                        y2 - y1,
                        fill=False,
                        edgecolor="red",
                        linewidth=0.5 + 3.0 * share,
                        alpha=0.25 + 0.75 * share,
                    )
                )
                axes.text(x1, y1, f"{weights[n]:.2f}", color="yellow", fontsize=6, va="bottom")
            axes.set_xlim(0, width)
            axes.set_ylim(height, 0)
    if title:
        figure.suptitle(title)
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
