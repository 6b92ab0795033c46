"""The built-in synthetic HOI video set: small, deterministic, and unsolvable without relations.

Every video is three turns. In each turn one stick-figure person (shirt red,
green or blue) stands in a plain room holding one object out on a stick (a
dotted ball, a striped box or a labelled bottle; red, green or blue). Each
video shows all three shirt colours and all three object colours once, each
object colour with its own kind, so every class holds the same people and the
same objects in the same amounts: no single box, and no set of boxes pooled
over the video, tells the class. More strongly, video ``i`` of every class is
drawn from one shared random stream, so the six classes hold exactly the same
boxes; they differ only in who appears with what, and when:

* local classes: the colour of the object relative to the holder's shirt,
  on the wheel red -> green -> blue -> red (same / next / previous colour);
  one frame's two boxes, taken jointly, decide it;
* order classes: the order of the object kinds over the three turns (three
  rotations of ball -> box -> bottle); they show the same turns in a different
  order, so no single frame decides it, only frames compared across time;
* cross-frame classes (``class_set="sharp"``): five turns of the same three
  pairs as the order classes, one pair seen in three separate turns; which pair
  returns (its colour relation) is the class. The set of frames is that of
  the order classes; only recognising the same person and object across frames
  and counting them tells it, in any order.

The class rules live in one place, :func:`turn_plan`, which the feature-level
benchmark set (:mod:`hoitool.datasets.synthetic_features`) uses as well.

``generate`` renders real H.264 mp4 files with PyAV (MPEG-4 Part 2 where the
build has no libx264), writes the person's and the object's box for every
frame to ``annotations.jsonl`` and ``manifest.json`` last. See
docs/synthetic-dataset.md for the classes and the leaks ruled out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from hoitool.boxes.jsonl import FrameBoxes
from hoitool.datasets.common import ANNOTATIONS_FILE, SkipLog, write_prepared
from hoitool.datasets.registry import register_preparer
from hoitool.errors import UsageError
from hoitool.io.atomic import atomic_path
from hoitool.manifest import Manifest, VideoEntry
from hoitool.settings.prepare import SyntheticSettings

GENERATOR_VERSION = 2  # 2: the order classes' context is named "order" (was "global"); class sets
COLOURS = ("red", "green", "blue")  # also the colour wheel: each one's "next" is the one after it
KINDS = ("ball", "box", "bottle")
OBJECT_CLASSES = (*KINDS, "person")  # box labels index this list
PERSON_LABEL = OBJECT_CLASSES.index("person")
VIDEO_DIR = "videos"
VIDEO_NAME = re.compile(r"^syn\d+\.mp4$")


@dataclass(frozen=True)
class ClassRule:
    name: str
    context: str  # "local" (one frame's boxes jointly), "cross-frame" (nodes across frames, no order) or "order"
    shift: int | None  # local: held object colour = shirt colour + shift on the wheel
    kind_order: tuple[str, ...] | None  # order: the order in which the object kinds are held
    description: str
    returns: int | None = None  # cross-frame: the colour shift of the one pair seen in three separate turns

    @property
    def turns(self) -> int:
        """Three turns, or five when one pair keeps returning."""
        return len(RETURN_TURNS) + 2 if self.returns is not None else 3


CONTEXTS = ("local", "cross-frame", "order")
LOCAL_RULES = (
    ClassRule("hold_same_colour", "local", 0, None, "every person holds an object of their own shirt colour"),
    ClassRule(
        "hold_next_colour",
        "local",
        1,
        None,
        "every person holds an object one colour on from their shirt (red->green, green->blue, blue->red)",
    ),
    ClassRule(
        "hold_previous_colour",
        "local",
        2,
        None,
        "every person holds an object one colour back from their shirt (red->blue, green->red, blue->green)",
    ),
)
ORDER_RULES = (
    ClassRule(
        "ball_then_box_then_bottle",
        "order",
        None,
        ("ball", "box", "bottle"),
        "the ball is held first, then the box, then the bottle",
    ),
    ClassRule(
        "box_then_bottle_then_ball",
        "order",
        None,
        ("box", "bottle", "ball"),
        "the box is held first, then the bottle, then the ball",
    ),
    ClassRule(
        "bottle_then_ball_then_box",
        "order",
        None,
        ("bottle", "ball", "box"),
        "the bottle is held first, then the ball, then the box",
    ),
)
CROSS_FRAME_RULES = (
    ClassRule(
        "same_colour_pair_returns",
        "cross-frame",
        None,
        None,
        "of three person-object pairs, the one sharing a colour is seen in three separate turns",
        returns=0,
    ),
    ClassRule(
        "next_colour_pair_returns",
        "cross-frame",
        None,
        None,
        "of three person-object pairs, the one whose object is one colour on is seen in three separate turns",
        returns=1,
    ),
    ClassRule(
        "previous_colour_pair_returns",
        "cross-frame",
        None,
        None,
        "of three person-object pairs, the one whose object is one colour back is seen in three separate turns",
        returns=2,
    ),
)
# The rendered demo set's default (version-1 classes); "sharp" adds the cross-frame classes.
CLASS_RULES = LOCAL_RULES + ORDER_RULES
CLASS_SETS = {"default": CLASS_RULES, "sharp": LOCAL_RULES + CROSS_FRAME_RULES + ORDER_RULES}
CLASSES = tuple(rule.name for rule in CLASS_RULES)
NEEDS = {
    "local": "the person's and the object's colours in the same frame, jointly",
    "cross-frame": "the same person and object recognised across frames and counted (no order needed)",
    "order": "which object kind comes early and which late: nodes compared across time (needs frame order)",
}


def class_rules(class_set: str = "default") -> tuple[ClassRule, ...]:
    """The rules of a named class set (``default``: 6 classes, ``sharp``: 9 with the cross-frame ones)."""
    if class_set not in CLASS_SETS:
        raise UsageError(f"class_set={class_set!r}: must be one of {', '.join(CLASS_SETS)}")
    return CLASS_SETS[class_set]


def describe_classes(class_set: str = "default") -> list[dict[str, str]]:
    """One row per class: name, context, what defines it, and what a model must see to tell it."""
    return [
        {"name": rule.name, "context": rule.context, "rule": rule.description, "needs": NEEDS[rule.context]}
        for rule in class_rules(class_set)
    ]


# -- the class rules as turns: the one place that says who appears with what, and when --
RETURN_TURNS = (0, 2, 4)  # of five turns, those of the returning pair (never two in a row)


@dataclass(frozen=True)
class Cast:
    """The random draws of one scene that the class rules read (shared by every class version of the scene)."""

    turn_order: tuple[int, ...]  # a permutation of 0..2
    kind_of_colour: tuple[int, ...]  # object colour c is a KINDS[kind_of_colour[c]]
    reflection: int  # 0..2: which pairing the non-local classes use


def turn_plan(rule: ClassRule, cast: Cast) -> list[tuple[int, int]]:
    """Per turn, in order: (shirt colour, object colour), indices into COLOURS.

    * local: the shirts in ``turn_order``, each holding the colour ``shift`` on;
    * order: the objects in the rule's kind order; person ``(reflection - object) mod 3``,
      so the three turns have the shifts same, next and previous once each;
    * cross-frame: the same three pairs as the order classes; the pair with shift
      ``returns`` in turns 1, 3 and 5 of five, the two others (in ``turn_order`` of their
      objects) in turns 2 and 4.

    Every class shows each shirt, object colour and kind; the non-local classes of a scene
    show the same three pairs, so the set of frames is the same for all six of them.
    """
    if rule.shift is not None:
        return [(int(p), int((p + rule.shift) % 3)) for p in cast.turn_order]
    if rule.kind_order is not None:
        colour_of_kind = np.argsort(cast.kind_of_colour)
        objects = [int(colour_of_kind[KINDS.index(kind)]) for kind in rule.kind_order]
        return [(int((cast.reflection - o) % 3), o) for o in objects]
    assert rule.returns is not None  # every rule sets one of shift, kind_order, returns
    again = int(2 * (rule.returns + cast.reflection) % 3)  # the object o with shift (2o - reflection) = returns (mod 3)
    others = iter([o for o in cast.turn_order if o != again])
    objects = [again if turn in RETURN_TURNS else next(others) for turn in range(rule.turns)]
    return [(int((cast.reflection - o) % 3), o) for o in objects]


def colour_shift(person: int, thing: int) -> int:
    """0 same, 1 next, 2 previous: the object's colour relative to the shirt on the wheel."""
    return (thing - person) % 3


# -- scene: what one video shows, from the random stream video i shares across classes --
@dataclass
class Scene:
    """Per turn (0, 1, 2): when it is, who is on screen with which object, where, and on which side."""

    bounds: list[tuple[int, int]]  # frames [start, end) of each turn
    person_colours: list[int]  # index into COLOURS
    object_colours: list[int]
    object_kinds: list[int]  # index into KINDS
    positions: list[float]  # where the person + stick + object group stands, 0 (leftmost) .. 1 (rightmost)
    sides: list[int]  # -1: object held out on the person's left, +1: on the right
    sway_phase: float
    bob_phase: float
    shades: np.ndarray  # (3, 2, 3) colour jitter per turn: shirt, object
    background: np.ndarray  # (8, 8) low-frequency brightness texture


def turn_bounds(num_frames: int, rng: np.random.Generator, turns: int = 3) -> list[tuple[int, int]]:
    """``turns`` turns of random, exchangeable lengths (about equal, at least one frame each).

    Equal fixed thirds would let a sampler of T frames (T not a multiple of 3)
    take fewer frames from the middle turn in every video, so the object
    used second would show up less often in every video of a class; with
    exchangeable lengths no turn position is systematically shorter.
    """
    shares = rng.dirichlet([8.0] * turns) * (num_frames - turns)
    lengths = np.floor(shares).astype(int)
    leftover = num_frames - turns - int(lengths.sum())
    ties = rng.permutation(turns)  # random tie-break keeps the positions exchangeable
    order = sorted(range(turns), key=lambda turn: (-(shares[turn] - lengths[turn]), ties[turn]))
    lengths[order[:leftover]] += 1
    ends = np.cumsum(lengths + 1)
    return [(int(end - length - 1), int(end)) for end, length in zip(ends, lengths, strict=False)]


def make_scene(rule: ClassRule, rng: np.random.Generator, num_frames: int) -> Scene:
    """Draw the cast and its looks, then let the class rule (:func:`turn_plan`) decide who appears with whom, and when.

    Everything a single box shows is tied to the entity, not to the turn: each
    shirt colour has its side, place and shade, each object colour its kind and
    shade. ``generate`` draws these from a stream shared by video ``i`` of every
    class, so every class holds exactly the same boxes; the class only pairs
    shirts with objects and orders the turns. Draws a four-turn rule needs come
    after all the others, so they leave the shared cast unchanged.
    """
    bounds = turn_bounds(num_frames, rng)
    turn_order = rng.permutation(3)  # shirt colour on screen in each turn (local classes)
    kind_of_colour = rng.permutation(3)  # object colour c is a KINDS[kind_of_colour[c]]
    side_of_colour = rng.choice([-1, 1], 3)
    position_of_colour = rng.uniform(0.0, 1.0, 3)
    shades = rng.integers(-12, 13, (2, 3, 3))  # [shirt, object][colour]
    reflection = int(rng.integers(3))
    sway_phase, bob_phase = rng.uniform(0, 2 * np.pi, 2)
    background = rng.uniform(-1, 1, (8, 8))
    if rule.turns != 3:
        bounds = turn_bounds(num_frames, rng, rule.turns)
    cast = Cast(tuple(int(c) for c in turn_order), tuple(int(k) for k in kind_of_colour), reflection)
    plan = turn_plan(rule, cast)
    person_colours = [p for p, _ in plan]
    object_colours = [o for _, o in plan]
    return Scene(
        bounds=bounds,
        person_colours=person_colours,
        object_colours=object_colours,
        object_kinds=[int(kind_of_colour[c]) for c in object_colours],
        positions=[float(position_of_colour[c]) for c in person_colours],
        sides=[int(side_of_colour[c]) for c in person_colours],
        sway_phase=float(sway_phase),
        bob_phase=float(bob_phase),
        shades=np.stack(
            [np.stack([shades[0, p], shades[1, o]]) for p, o in zip(person_colours, object_colours, strict=False)]
        ),
        background=background,
    )


# -- geometry on a 128 x 128 canvas (scaled to the frame size when drawn) ----------
CANVAS = 128.0
GROUND_Y = 104.0
HEAD_Y, HEAD_R = 28.0, 8.0
SHOULDER_Y, HIP_Y = 41.0, 70.0
HALF_TORSO = 7.0
REACH = 15.0  # hand's horizontal distance from the body centre
HAND_Y = 54.0
OBJECT_SIZE = {"ball": (18.0, 18.0), "box": (17.0, 17.0), "bottle": (12.0, 22.0)}
BOTTLE_NECK = 5.0
LIMB = 4.0  # stroke width of arms and legs
HAND = 3.0  # hand radius
STICK = 14.0  # the object is held out on a stick this long: the two boxes never touch
SWAY = 2.0
MARGIN = 3.0


@dataclass
class Pose:
    """Where everything is in one frame (canvas units)."""

    turn: int
    body_x: float  # torso centre
    side: int
    hand: tuple[float, float]  # centre of the hand holding the stick
    object_centre: tuple[float, float]


def pose(scene: Scene, frame: int, num_frames: int) -> Pose:
    """The turn's person sways and holds their object out on a stick to one side; hand and object bob.

    The motions run on the video's clock (random phases), never on the phase
    within a turn, so frames sampled from the first, second or third turn look
    alike: no box reveals when in the video it was taken.
    """
    turn = next(turn for turn, (start, end) in enumerate(scene.bounds) if start <= frame < end)
    side = scene.sides[turn]
    width, _ = OBJECT_SIZE[KINDS[scene.object_kinds[turn]]]
    widest = max(
        w for w, _ in OBJECT_SIZE.values()
    )  # not this object's width: where a person stands says nothing of it
    behind, ahead = HALF_TORSO + 3.0 + LIMB / 2 + SWAY, REACH + STICK + widest + SWAY  # extent from the body centre
    lowest, highest = MARGIN + behind, CANVAS - MARGIN - ahead
    if side < 0:
        lowest, highest = MARGIN + ahead, CANVAS - MARGIN - behind
    body_x = lowest + scene.positions[turn] * (highest - lowest)
    body_x += SWAY * np.sin(2 * np.pi * frame / num_frames + scene.sway_phase)
    hand = (body_x + side * REACH, HAND_Y + 3.0 * np.sin(4 * np.pi * frame / num_frames + scene.bob_phase))
    centre = (hand[0] + side * (STICK + width / 2), hand[1])
    return Pose(turn, float(body_x), side, (float(hand[0]), float(hand[1])), (float(centre[0]), float(centre[1])))


def person_box(frame_pose: Pose) -> tuple[float, ...]:
    """Head to feet, both arms and the holding hand; the stick beyond the hand belongs to neither box."""
    bx, side = frame_pose.body_x, frame_pose.side
    free_hand = bx - side * (HALF_TORSO + 3.0)
    half = LIMB / 2
    left = min(bx - HALF_TORSO, free_hand - half, frame_pose.hand[0] - HAND)
    right = max(bx + HALF_TORSO, free_hand + half, frame_pose.hand[0] + HAND)
    return (left, HEAD_Y - HEAD_R, right, GROUND_Y + half)


def object_box(kind: str, centre: tuple[float, float]) -> tuple[float, ...]:
    width, height = OBJECT_SIZE[kind]
    top = centre[1] - height / 2 - (BOTTLE_NECK if kind == "bottle" else 0.0)
    return (centre[0] - width / 2, top, centre[0] + width / 2, centre[1] + height / 2)


def frame_boxes(scene: Scene, frame_pose: Pose, size: int) -> FrameBoxes:
    """The person, then the object, xyxy in pixels."""
    kind = scene.object_kinds[frame_pose.turn]
    boxes = [person_box(frame_pose), object_box(KINDS[kind], frame_pose.object_centre)]
    array = np.clip(np.asarray(boxes, np.float32) * (size / CANVAS), 0, size)
    labels = np.array([PERSON_LABEL, OBJECT_CLASSES.index(KINDS[kind])], np.int64)
    return FrameBoxes(array, np.ones(2, np.float32), labels, np.array([True, False]))


# -- drawing -------------------------------------------------------------------------
SUPERSAMPLE = 4
RGB = {"red": (205, 45, 45), "green": (40, 160, 65), "blue": (45, 80, 210)}
SKIN = (238, 196, 160)
LIMB_COLOUR = (60, 60, 64)
STICK_COLOUR = (120, 90, 60)
OUTLINE = (40, 40, 40)
WALL = np.array([228, 226, 220], np.float32)
FLOOR = np.array([196, 190, 178], np.float32)


def _background(scene: Scene, size: int) -> np.ndarray:
    from PIL import Image

    big = size * SUPERSAMPLE
    texture = Image.fromarray(((scene.background + 1) * 127.5).astype(np.uint8)).resize(
        (big, big), Image.Resampling.BICUBIC
    )
    light = (np.asarray(texture, np.float32) / 127.5 - 1.0)[..., None] * 6.0
    rows = np.arange(big)[:, None, None]
    base = np.where(rows < GROUND_Y * big / CANVAS, WALL, FLOOR)
    return np.clip(base + light, 0, 255).astype(np.uint8)


def _shade(colour: tuple[int, int, int], jitter: np.ndarray) -> tuple[int, int, int]:
    red, green, blue = (int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter, strict=False))
    return red, green, blue


def render(
    scene: Scene, frame: int, num_frames: int, size: int, background: np.ndarray
) -> tuple[np.ndarray, FrameBoxes]:
    """One RGB frame (size x size, drawn 4x larger and averaged down) and its boxes."""
    from PIL import Image, ImageDraw

    frame_pose = pose(scene, frame, num_frames)
    turn, bx, side, hand = frame_pose.turn, frame_pose.body_x, frame_pose.side, frame_pose.hand
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    k = size * SUPERSAMPLE / CANVAS
    outline = max(1, round(0.6 * k))

    def xy(*points):
        return [round(v * k) for point in points for v in point]

    def disc(centre, radius, **style):
        draw.ellipse(xy((centre[0] - radius, centre[1] - radius), (centre[0] + radius, centre[1] + radius)), **style)

    def limb(a, b):
        draw.line(xy(a, b), fill=LIMB_COLOUR, width=max(1, round(LIMB * k)))
        for end in (a, b):  # round caps
            disc(end, LIMB / 2, fill=LIMB_COLOUR)

    shirt = _shade(RGB[COLOURS[scene.person_colours[turn]]], scene.shades[turn, 0])
    limb((bx - 4, HIP_Y), (bx - 5, GROUND_Y))
    limb((bx + 4, HIP_Y), (bx + 5, GROUND_Y))
    limb((bx - side * (HALF_TORSO - 1), SHOULDER_Y + 2), (bx - side * (HALF_TORSO + 3), HIP_Y - 2))
    draw.rounded_rectangle(
        xy((bx - HALF_TORSO, SHOULDER_Y - 4), (bx + HALF_TORSO, HIP_Y + 1)),
        radius=round(4 * k),
        fill=shirt,
        outline=OUTLINE,
        width=outline,
    )
    limb((bx + side * (HALF_TORSO - 1), SHOULDER_Y + 2), hand)
    disc((bx, HEAD_Y), HEAD_R, fill=SKIN, outline=OUTLINE, width=outline)
    kind = KINDS[scene.object_kinds[turn]]
    width = OBJECT_SIZE[kind][0]
    stick_end = (frame_pose.object_centre[0] - side * width / 2, frame_pose.object_centre[1])
    draw.line(xy(hand, stick_end), fill=STICK_COLOUR, width=max(1, round(1.5 * k)))
    _draw_object(
        draw,
        xy,
        kind,
        frame_pose.object_centre,
        _shade(RGB[COLOURS[scene.object_colours[turn]]], scene.shades[turn, 1]),
        k,
    )
    disc(hand, HAND, fill=SKIN, outline=OUTLINE, width=max(1, round(0.4 * k)))
    frame_array = np.asarray(image.resize((size, size), Image.Resampling.BOX))
    return frame_array, frame_boxes(scene, frame_pose, size)


def _draw_object(draw, xy, kind: str, centre: tuple[float, float], colour, k: float) -> None:
    """Ball: dotted disc. Box: striped square. Bottle: labelled body with a neck and a grey cap."""
    cx, cy = centre
    width, height = OBJECT_SIZE[kind]
    light = tuple(min(255, int(c * 0.45 + 140)) for c in colour)
    dark = tuple(int(c * 0.55) for c in colour)
    outline = max(1, round(0.6 * k))
    if kind == "ball":
        draw.ellipse(
            xy((cx - width / 2, cy - height / 2), (cx + width / 2, cy + height / 2)),
            fill=colour,
            outline=OUTLINE,
            width=outline,
        )
        for dx, dy in ((-3.5, -3.5), (3.5, -1.5), (-0.5, 4.0)):
            draw.ellipse(xy((cx + dx - 1.8, cy + dy - 1.8), (cx + dx + 1.8, cy + dy + 1.8)), fill=light)
    elif kind == "box":
        draw.rectangle(
            xy((cx - width / 2, cy - height / 2), (cx + width / 2, cy + height / 2)),
            fill=colour,
            outline=OUTLINE,
            width=outline,
        )
        for offset in (-4.5, 0.0, 4.5):
            draw.rectangle(
                xy((cx - width / 2 + 1, cy + offset - 1.1), (cx + width / 2 - 1, cy + offset + 1.1)), fill=dark
            )
    else:
        top = cy - height / 2
        draw.rectangle(
            xy((cx - 2.0, top - BOTTLE_NECK), (cx + 2.0, top)), fill=(170, 170, 175), outline=OUTLINE, width=outline
        )
        draw.rounded_rectangle(
            xy((cx - width / 2, top), (cx + width / 2, cy + height / 2)),
            radius=round(3 * k),
            fill=colour,
            outline=OUTLINE,
            width=outline,
        )
        draw.rectangle(xy((cx - width / 2 + 1, cy - 2.5), (cx + width / 2 - 1, cy + 2.5)), fill=light)


# -- encoding ----------------------------------------------------------------------------
def choose_codec() -> str:
    """libx264 (H.264) when this PyAV build has it, else FFmpeg's native MPEG-4 Part 2 encoder."""
    import av

    try:
        av.Codec("libx264", "w")
        return "libx264"
    except (av.FFmpegError, ValueError):
        return "mpeg4"


def encode_video(path: Path, frames: list[np.ndarray], fps: float, codec: str) -> None:
    """Write an mp4 (yuv420p) atomically, byte-reproducibly.

    x264 needs one thread and no macroblock-tree rate control for that: with
    mbtree on, the same frames gave different bytes in different processes
    (measured with PyAV 18 / libx264 here, about 1 video in 12 at 64x64).
    """
    import av

    height, width = frames[0].shape[:2]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            rate = Fraction(fps).limit_denominator(1001)
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1
            if codec == "libx264":
                stream.options = {"crf": "16", "preset": "medium", "x264-params": "mbtree=0"}
            else:
                stream.bit_rate = 4_000_000
            for number, array in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts, frame.time_base = number, 1 / rate  # explicit clock: nothing left for the encoder to guess
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)


# -- splits and the whole set -------------------------------------------------------------
def class_splits(count: int, class_index: int) -> list[str]:
    """Splits for one class's videos (in their shuffled order): 20% val, 20% test, the rest train.

    At least one val and one test video from 3 videos up; with 2 videos the
    second goes to val or test alternately by class, so a tiny set still has
    every split.
    """
    if count >= 3:
        held = max(1, count // 5)
        return ["val"] * held + ["test"] * held + ["train"] * (count - 2 * held)
    if count == 2:
        return ["val" if class_index % 2 == 0 else "test", "train"]
    return ["train"] * count


def _check_arguments(videos_per_class: int, num_frames: int, size: int, fps: float, rules=CLASS_RULES) -> None:
    if videos_per_class < 1:
        raise UsageError(f"videos_per_class={videos_per_class}: need at least 1")
    turns = max(rule.turns for rule in rules)
    if num_frames < turns:
        raise UsageError(f"num_frames={num_frames}: need at least {turns} (one per turn)")
    if size < 32 or size % 2:
        raise UsageError(f"size={size}: need an even number of pixels, at least 32")
    if not fps > 0:
        raise UsageError(f"fps={fps}: must be positive")


def generate(
    out_dir: Path | str,
    videos_per_class: int = 12,
    num_frames: int = 24,
    size: int = 128,
    seed: int = 0,
    fps: float = 8,
    codec: str | None = None,
    class_set: str = "default",
) -> Manifest:
    """Render the synthetic set into ``out_dir`` and return its manifest (see the module docstring).

    The same arguments give byte-identical ``manifest.json`` and
    ``annotations.jsonl``, and identical video files with the same encoder build.
    ``codec`` overrides the encoder choice (``"libx264"`` or ``"mpeg4"``);
    ``class_set="sharp"`` adds the three cross-frame classes (:data:`CLASS_SETS`).
    """
    rules = class_rules(class_set)
    _check_arguments(videos_per_class, num_frames, size, fps, rules)
    out_dir = Path(out_dir)
    codec = codec or choose_codec()
    total = len(rules) * videos_per_class
    width = max(4, len(str(total - 1)))
    numbers = np.random.default_rng([seed, 1]).permutation(total)  # opaque ids: the id says nothing of the class
    (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    videos, boxes, written = [], {}, set()
    for class_index, rule in enumerate(rules):
        order = np.random.default_rng([seed, 2]).permutation(videos_per_class)  # the same for every class
        splits = class_splits(videos_per_class, class_index)
        for position, index in enumerate(order):
            video_id = f"syn{numbers[class_index * videos_per_class + index]:0{width}d}"
            scene = make_scene(rule, np.random.default_rng([seed, 3, int(index)]), num_frames)  # shared by classes
            background = _background(scene, size)
            frames, frame_boxes_ = [], {}
            for frame in range(num_frames):
                image, item = render(scene, frame, num_frames, size, background)
                frames.append(image)
                frame_boxes_[frame] = item
            source = f"{VIDEO_DIR}/{video_id}.mp4"
            encode_video(out_dir / source, frames, fps, codec)
            written.add(f"{video_id}.mp4")
            boxes[video_id] = frame_boxes_
            videos.append(
                VideoEntry(
                    id=video_id,
                    source=source,
                    labels=[class_index],
                    split=splits[position],
                    kind="video",
                    group=None,
                    fps=float(fps),
                    num_frames=num_frames,
                    annotations=ANNOTATIONS_FILE,
                    objects=held_objects(scene),
                    extra={"scene": int(index), "turns": _scene_record(scene)},
                )
            )
    for stale in (out_dir / VIDEO_DIR).iterdir():  # videos of an earlier, larger generation
        if VIDEO_NAME.match(stale.name) and stale.name not in written:
            stale.unlink()
    manifest = Manifest(
        dataset="synthetic",
        classes=[rule.name for rule in rules],
        multilabel=False,
        videos=videos,
        object_classes=list(OBJECT_CLASSES),
        extra={
            "generator": "hoitool.datasets.synthetic",
            "generator_version": GENERATOR_VERSION,
            "codec": codec,
            "seed": seed,
            "videos_per_class": videos_per_class,
            "num_frames": num_frames,
            "size": size,
            "fps": fps,
            "class_context": {rule.name: rule.context for rule in rules},
            **({"class_set": class_set} if class_set != "default" else {}),
        },
    )
    return write_prepared(manifest, out_dir, SkipLog(), boxes=boxes)


@register_preparer("synthetic", SyntheticSettings)
def build(config: SyntheticSettings, out: Path) -> Manifest:
    """Generate a small synthetic HOI video set with ground-truth boxes (needs no download)."""
    return generate(
        out,
        videos_per_class=config.videos_per_class,
        num_frames=config.frames,
        size=config.size,
        seed=config.seed,
        fps=float(config.fps),
        class_set=config.class_set,
    )


def held_objects(scene: Scene) -> list[str]:
    """The video's object labels: the kinds held, in the order they first appear (dual attention's object slots)."""
    return list(dict.fromkeys(KINDS[kind] for kind in scene.object_kinds))


def _scene_record(scene: Scene) -> list[dict]:
    """The ground truth behind the pixels, per turn, for checks and docs; models never read it."""
    return [
        {
            "frames": [start, end],
            "person_colour": COLOURS[scene.person_colours[turn]],
            "object_colour": COLOURS[scene.object_colours[turn]],
            "object_kind": KINDS[scene.object_kinds[turn]],
            "side": "left" if scene.sides[turn] < 0 else "right",
        }
        for turn, (start, end) in enumerate(scene.bounds)
    ]
