"""The synthetic set's class rules rendered directly as node features: no video, thousands of videos in seconds.

Each video is ``T`` frames x ``K`` box slots of ``D``-dim descriptors, in the
shapes the features store hands the models (``nodes (T, K, D)``, ``valid
(T, K)``, ``boxes (T, K, 4)`` xyxy pixels, ``frame_size (2,)``). Slot 0 is the
person, slot 1 the object they hold, further slots are padding (invalid).
Who appears with what, and when, comes from
:func:`hoitool.datasets.synthetic.turn_plan` (the rules the rendered set uses);
only the pixels are replaced by descriptors:

* an appearance space drawn once per data seed: one vector per role (person,
  object), colour and kind; a shirt's descriptor is ``role + colour + look``, an
  object's ``role + colour + kind + look``, where ``look`` is that entity's own
  small random offset (its shade), the same in every class version of a scene;
* a pose: each entity has ``POSES`` random variants of its descriptor (Gaussian,
  ``noise`` is their norm) and shows variant ``t mod POSES`` in frame ``t``, on
  the video's clock. Every entity is on screen for at least ``POSES`` frames in
  a row, so it shows all its variants in every class: the *set* of distinct
  descriptors (what max pooling reads) is exactly the same in every class
  version of a scene, whatever the counts (i.i.d. noise per frame would let the
  maximum over more frames grow, a count leak to max-pooled models);
* turns of equal length (``T`` must be a multiple of every rule's turn count:
  15 for the sharp set), so counts of frames carry no class information except
  where the rule makes a pair return.

Videos of one scene share every random draw (cast, looks, places) across the
classes; only the class rule differs, so no single box, no set of boxes, and no
box with its frame time tells the class (tests/test_synthetic_features.py
measures that). :func:`view_ceilings` gives, by construction, what an ideal
model reading exactly what each view's architecture reads can reach.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields

import numpy as np

from hoitool.datasets.synthetic import CONTEXTS, Cast, class_rules, turn_plan
from hoitool.errors import UsageError

SPLIT_KEYS = {"train": 0, "val": 1, "test": 2, "unlabelled": 3}  # disjoint scene streams per split
FRAME_SIZE = (128.0, 128.0)  # (H, W) pixels of the imagined frames the boxes live in
POSES = 3  # descriptor variants per entity, shown in turn on the video's clock
ROLES = ("person", "object")


@dataclass
class FeatureSet:
    """One split: node arrays in the features store's shapes, labels, and the ground truth behind them."""

    nodes: np.ndarray  # (V, T, K, D) float32
    valid: np.ndarray  # (V, T, K) bool
    boxes: np.ndarray  # (V, T, K, 4) float32, xyxy pixels
    frame_size: np.ndarray  # (V, 2) float32, (H, W)
    labels: np.ndarray  # (V,) int64, index into classes
    scenes: np.ndarray  # (V,) int64: the class versions of one scene share it
    frame_pairs: (
        np.ndarray
    )  # (V, T, 2) int64: (shirt colour, object colour) of each frame; ground truth, no model reads it
    classes: tuple[str, ...]
    contexts: tuple[str, ...]  # per class

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> FeatureSet:
        """The videos at ``index`` (array of positions or a boolean mask)."""
        per_video = {
            f.name: getattr(self, f.name)[index] for f in fields(self) if f.name not in ("classes", "contexts")
        }
        return FeatureSet(**per_video, classes=self.classes, contexts=self.contexts)

    def context_of(self) -> np.ndarray:
        """(V,) the context of each video's class."""
        return np.asarray(self.contexts)[self.labels]


@dataclass(frozen=True)
class Appearance:
    """The descriptor space of one data seed: what a role, a colour and a kind look like."""

    role: np.ndarray  # (2, D)
    colour: np.ndarray  # (3, D)
    kind: np.ndarray  # (3, D)


def appearance(seed: int, dim: int) -> Appearance:
    """Unit-norm-ish random vectors in ``dim`` dimensions, fixed per data seed (the 'backbone')."""
    rng = np.random.default_rng([seed, 99])
    draw = lambda n: rng.normal(0.0, 1.0 / np.sqrt(dim), (n, dim))  # noqa: E731
    return Appearance(draw(2), draw(3), draw(3))


def _check(rules, frames: int, dim: int, slots: int, videos_per_class: int, noise: float) -> None:
    turns = sorted({rule.turns for rule in rules})
    if frames < 1 or any(frames % t or frames // t < POSES for t in turns):
        raise UsageError(
            f"frames={frames}: must be a multiple of {int(np.lcm.reduce(turns))} with at least {POSES} "
            f"frames per turn (equal turns; the rules have {' or '.join(map(str, turns))} turns)"
        )
    if dim < 8:
        raise UsageError(f"dim={dim}: need at least 8 descriptor dimensions")
    if slots < 2:
        raise UsageError(f"slots={slots}: need at least 2 box slots (person, object)")
    if videos_per_class < 1:
        raise UsageError(f"videos_per_class={videos_per_class}: need at least 1")
    if not noise >= 0:
        raise UsageError(f"noise={noise}: must be >= 0")


def generate_split(
    split: str,
    videos_per_class: int,
    seed: int = 0,
    frames: int = 15,
    dim: int = 32,
    slots: int = 2,
    noise: float = 0.5,
    look: float = 0.3,
    class_set: str = "sharp",
) -> FeatureSet:
    """``videos_per_class`` scenes of ``split``, each rendered once per class (see the module docstring).

    The same arguments give identical arrays; splits draw disjoint scenes, so
    no scene's class versions are split between train and test.
    """
    if split not in SPLIT_KEYS:
        raise UsageError(f"split={split!r}: must be one of {', '.join(SPLIT_KEYS)}")
    rules = class_rules(class_set)
    _check(rules, frames, dim, slots, videos_per_class, noise)
    space = appearance(seed, dim)
    count = len(rules) * videos_per_class
    nodes = np.zeros((count, frames, slots, dim), np.float32)
    valid = np.zeros((count, frames, slots), bool)
    boxes = np.zeros((count, frames, slots, 4), np.float32)
    pairs = np.zeros((count, frames, 2), np.int64)
    labels = np.repeat(np.arange(len(rules)), videos_per_class)
    scenes = np.tile(np.arange(videos_per_class), len(rules))
    for scene in range(videos_per_class):
        rng = np.random.default_rng([seed, SPLIT_KEYS[split], scene])
        cast = Cast(
            tuple(int(c) for c in rng.permutation(3)), tuple(int(k) for k in rng.permutation(3)), int(rng.integers(3))
        )
        looks = rng.normal(0.0, look / np.sqrt(dim), (2, 3, dim))  # [role][colour]: each entity's own shade
        poses = rng.normal(0.0, noise / np.sqrt(dim), (2, 3, POSES, dim))  # [role][colour][pose]
        clock = np.arange(frames) % POSES
        places = rng.uniform(20.0, 108.0, 3)  # where each shirt colour stands (x centre, pixels)
        sides = rng.choice([-1.0, 1.0], 3)
        sway = rng.uniform(0, 2 * np.pi)
        for class_index, rule in enumerate(rules):
            video = class_index * videos_per_class + scene
            plan = turn_plan(rule, cast)
            per_turn = frames // len(plan)
            frame_pairs = np.repeat(np.asarray(plan, np.int64), per_turn, axis=0)  # (T, 2)
            shirt, thing = frame_pairs[:, 0], frame_pairs[:, 1]
            kinds = np.asarray(cast.kind_of_colour)[thing]
            nodes[video, :, 0] = space.role[0] + space.colour[shirt] + looks[0, shirt] + poses[0, shirt, clock]
            nodes[video, :, 1] = (
                space.role[1] + space.colour[thing] + space.kind[kinds] + looks[1, thing] + poses[1, thing, clock]
            )
            valid[video, :, :2] = True
            boxes[video, :, :2] = _boxes(places[shirt], sides[shirt], sway, frames)
            pairs[video] = frame_pairs
    return FeatureSet(
        nodes,
        valid,
        boxes,
        np.tile(np.asarray(FRAME_SIZE, np.float32), (count, 1)),
        labels,
        scenes,
        pairs,
        tuple(rule.name for rule in rules),
        tuple(rule.context for rule in rules),
    )


def _boxes(x: np.ndarray, side: np.ndarray, sway: float, frames: int) -> np.ndarray:
    """(T, 2, 4) person and held-object boxes: placed by the shirt colour, swaying on the video's clock."""
    t = np.arange(frames) % POSES  # the pose clock: a box's geometry, too, is one of POSES variants
    cx = x + 2.0 * np.sin(2 * np.pi * t / POSES + sway)
    person = np.stack([cx - 9, np.full(frames, 20.0), cx + 9, np.full(frames, 106.0)], axis=-1)
    ox = cx + side * 32.0
    thing = np.stack([ox - 8, np.full(frames, 46.0), ox + 8, np.full(frames, 62.0)], axis=-1)
    return np.clip(np.stack([person, thing], axis=1), 0.0, 128.0)


# -- ceilings by construction -------------------------------------------------------------
def _signature(view: str, frame_pairs: np.ndarray):
    """What an ideal model of ``view`` reads from a video, as a hashable value (entities by colour and role).

    baseline: max-pooled single nodes -> the set of entities on screen;
    local: per-frame attention, max-pooled -> the set of distinct frames;
    global: attention over all nodes (softmax-weighted means) -> the multiset of entities, counts included;
    ordered: frame time on every node -> the whole sequence of frames.
    """
    frames = [tuple(int(v) for v in pair) for pair in frame_pairs]
    if view == "baseline":
        return frozenset({("person", p) for p, _ in frames} | {("object", o) for _, o in frames})
    if view == "local":
        return frozenset(frames)
    if view == "global":
        return frozenset(Counter([("person", p) for p, _ in frames] + [("object", o) for _, o in frames]).items())
    if view == "ordered":
        return tuple(frames)
    raise ValueError(f"unknown view {view!r}")


CEILING_VIEWS = ("baseline", "local", "global", "ordered")


def view_ceilings(data: FeatureSet, views=CEILING_VIEWS) -> dict[str, np.ndarray]:
    """Per view, (classes,) the best accuracy an ideal model reading exactly that view's information can reach.

    The class versions of a scene that give the same signature are the same
    input up to class-independent noise, so no model of that view tells them
    apart: it is right on at most one of a group of ``g`` (balanced classes),
    i.e. ``1/g``; averaged over scenes. Distinct signatures are separable by
    construction, so the bound is reached.
    """
    result = {}
    for view in views:
        scores = np.zeros(len(data.classes))
        counts = np.zeros(len(data.classes))
        for scene in np.unique(data.scenes):
            members = np.flatnonzero(data.scenes == scene)
            signatures = [_signature(view, data.frame_pairs[m]) for m in members]
            sizes = Counter(signatures)
            for m, signature in zip(members, signatures, strict=True):
                scores[data.labels[m]] += 1.0 / sizes[signature]
                counts[data.labels[m]] += 1
        result[view] = scores / np.maximum(counts, 1)
    return result


def context_means(per_class: np.ndarray, contexts: tuple[str, ...]) -> dict[str, float]:
    """(classes,) values -> their mean per context present (balanced classes: the per-context accuracy)."""
    contexts_array = np.asarray(contexts)
    return {
        context: float(per_class[contexts_array == context].mean())
        for context in CONTEXTS
        if (contexts_array == context).any()
    }
