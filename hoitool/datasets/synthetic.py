"""The built-in synthetic HOI video set: small, deterministic, and unsolvable without relations.

Every video shows the same cast: three stick-figure people side by side (shirts
red, green and blue, one each) and, beside each person on a stand, one of three
objects (a dotted ball, a striped box, a labelled bottle; coloured red, green
and blue, one each). The video is three turns; in each turn one person reaches
for the object beside them, lifts it and puts it back. Each person and each
object acts exactly once, so every video holds the same people, the same
objects, the same poses and the same motions, in the same amounts: no single
box, and no set of boxes pooled over the video, tells the class.

What differs is a relation (docs/synthetic-dataset.md):

* local classes: the colour of the object a person lifts relative to the
  person's own shirt colour (same / next / previous on the wheel
  red -> green -> blue -> red); one frame's boxes, taken jointly, decide it;
* global classes: the order in which the three object kinds are lifted
  (ball-box-bottle, its reverse, box-ball-bottle); no single frame decides it,
  only frames compared across time.

``generate`` renders real H.264 mp4 files with PyAV (MPEG-4 Part 2 where the
build has no libx264), writes every person's and object's box in every frame
to ``annotations.jsonl`` and the ``manifest.json`` last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from hoitool.boxes.jsonl import FrameBoxes
from hoitool.datasets.folder import ANNOTATIONS_FILE, SkipLog, write_prepared
from hoitool.errors import UsageError
from hoitool.io.atomic import atomic_path
from hoitool.manifest import Manifest, VideoEntry

GENERATOR_VERSION = 1
COLOURS = ("red", "green", "blue")  # also the colour wheel: each one's "next" is the one after it
KINDS = ("ball", "box", "bottle")
OBJECT_CLASSES = (*KINDS, "person")  # box labels index this list
PERSON_LABEL = OBJECT_CLASSES.index("person")
VIDEO_DIR = "videos"
VIDEO_NAME = re.compile(r"^syn\d+\.mp4$")


@dataclass(frozen=True)
class ClassRule:
    name: str
    context: str  # "local" (decidable from one frame's boxes jointly) or "global" (only across frames)
    shift: int | None  # local: lifted object colour = shirt colour + shift on the wheel
    kind_order: tuple[str, ...] | None  # global: the order in which the object kinds are lifted
    description: str


CLASS_RULES = (
    ClassRule("lift_same_colour", "local", 0, None,
              "each person lifts the object of their own shirt colour"),
    ClassRule("lift_next_colour", "local", 1, None,
              "each person lifts the object one colour on (red->green->blue->red) from their shirt"),
    ClassRule("lift_previous_colour", "local", 2, None,
              "each person lifts the object one colour back (red->blue->green->red) from their shirt"),
    ClassRule("ball_then_box_then_bottle", "global", None, ("ball", "box", "bottle"),
              "the ball is lifted first, then the box, then the bottle"),
    ClassRule("bottle_then_box_then_ball", "global", None, ("bottle", "box", "ball"),
              "the bottle is lifted first, then the box, then the ball (the reverse order)"),
    ClassRule("box_then_ball_then_bottle", "global", None, ("box", "ball", "bottle"),
              "the box is lifted first, then the ball, then the bottle"),
)
CLASSES = tuple(rule.name for rule in CLASS_RULES)

GLOBAL_PAIRING = (
    "in the global classes the colour relation varies from person to person: lifted colour = "
    "(m - shirt colour) mod 3 for a random m, so each video shows 'same', 'next' and 'previous' once each"
)


def describe_classes() -> list[dict[str, str]]:
    """One row per class: name, context (local/global), what defines it, and what a model needs to see it."""
    needs = {
        "local": "the colours of the reaching person and the lifted object in the same frame, jointly",
        "global": "which object is lifted in early versus late frames (frame order), i.e. nodes compared across time",
    }
    return [{"name": rule.name, "context": rule.context, "rule": rule.description, "needs": needs[rule.context]}
            for rule in CLASS_RULES]


# -- scene: everything random about one video, drawn from its own seed -------------
@dataclass
class Scene:
    person_colours: list[int]  # per column (left to right), index into COLOURS
    object_colours: list[int]  # per column
    object_kinds: list[int]  # per column, index into KINDS
    turn_columns: list[int]  # which column acts in turn 0, 1, 2
    shift_x: float  # whole-scene horizontal offset, canvas units
    sway_phase: list[float]  # per person
    shades: np.ndarray  # (6, 3) colour jitter: people then objects
    background: np.ndarray  # (8, 8) low-frequency brightness texture


def make_scene(rule: ClassRule, rng: np.random.Generator) -> Scene:
    """Draw a scene; the class only chooses how object colours pair with shirts, and the turn order.

    Every random draw happens for every class (same count, same order), so the
    class changes nothing but the two relations below.
    """
    person_colours = rng.permutation(3)
    kinds = rng.permutation(3)
    random_order = rng.permutation(3)
    reflection = int(rng.integers(3))
    if rule.shift is not None:
        object_colours = (person_colours + rule.shift) % 3
        turn_columns = random_order
    else:
        object_colours = (reflection - person_colours) % 3
        turn_columns = np.array([int(np.flatnonzero(kinds == KINDS.index(kind))[0]) for kind in rule.kind_order])
    return Scene(
        person_colours=[int(c) for c in person_colours],
        object_colours=[int(c) for c in object_colours],
        object_kinds=[int(k) for k in kinds],
        turn_columns=[int(c) for c in turn_columns],
        shift_x=float(rng.uniform(-2.5, 2.5)),
        sway_phase=[float(p) for p in rng.uniform(0, 2 * np.pi, 3)],
        shades=rng.integers(-12, 13, (6, 3)),
        background=rng.uniform(-1, 1, (8, 8)),
    )


# -- geometry on a 128 x 128 canvas (scaled to the frame size when drawn) ----------
CANVAS = 128.0
GROUND_Y = 96.0
STAND_TOP = 74.0
LIFT = 12.0
OBJECT_SIZE = {"ball": (14.0, 14.0), "box": (13.0, 13.0), "bottle": (9.0, 19.0)}
LIMB = 3.0  # stroke width of arms and legs
HAND = 2.5  # hand radius
CONTACT = 0.5  # reach phase from which the hand is on the object


def turn_bounds(num_frames: int) -> list[tuple[int, int]]:
    return [(turn * num_frames // 3, (turn + 1) * num_frames // 3) for turn in range(3)]


@dataclass
class Pose:
    """Where everything is in one frame (canvas units)."""

    body_x: list[float]  # per person, torso centre
    hand: list[tuple[float, float]]  # per person, right hand centre
    contact: list[bool]  # per person: hand on the object (the object is lifted)
    object_centre: list[tuple[float, float]]


def pose(scene: Scene, frame: int, num_frames: int) -> Pose:
    """Idle people sway a little; the acting person reaches (sin bump over the turn), grips, lifts, puts back."""
    reach = [0.0, 0.0, 0.0]
    for turn, (start, end) in enumerate(turn_bounds(num_frames)):
        if start <= frame < end:
            reach[scene.turn_columns[turn]] = float(np.sin(np.pi * (frame - start + 0.5) / (end - start)))
    body_x, hands, contact, centres = [], [], [], []
    for column in range(3):
        centre = (column + 0.5) * CANVAS / 3 + scene.shift_x
        bx = centre - 8.0 + 1.5 * np.sin(2 * np.pi * frame / num_frames + scene.sway_phase[column])
        width, height = OBJECT_SIZE[KINDS[scene.object_kinds[column]]]
        lift = LIFT * float(np.clip((reach[column] - CONTACT) / (1 - CONTACT), 0, 1))
        ox, oy = centre + 10.0, STAND_TOP - height / 2 - lift
        grip = (ox - width / 2, oy)
        rest = (bx + 7.0, 64.0)
        amount = min(1.0, reach[column] / CONTACT)
        hands.append((rest[0] + amount * (grip[0] - rest[0]), rest[1] + amount * (grip[1] - rest[1])))
        body_x.append(float(bx))
        contact.append(reach[column] >= CONTACT)
        centres.append((float(ox), float(oy)))
    return Pose(body_x, hands, contact, centres)


def person_box(bx: float, hand: tuple[float, float], contact: bool, object_left: float) -> tuple[float, ...]:
    """Head to feet, both arms; it stops where the object's box begins, so the two boxes touch, never overlap."""
    half = LIMB / 2
    x1 = min(bx - 7.0, hand[0]) - half
    right = hand[0] if contact else hand[0] + HAND
    x2 = min(max(bx + 5.0, right) + half, object_left)
    return (x1, 29.0, x2, GROUND_Y + half)


def object_box(kind: str, centre: tuple[float, float]) -> tuple[float, ...]:
    width, height = OBJECT_SIZE[kind]
    if kind == "bottle":  # the neck and cap sit on top of the body
        return (centre[0] - width / 2, centre[1] - height / 2 - 4.0, centre[0] + width / 2, centre[1] + height / 2)
    return (centre[0] - width / 2, centre[1] - height / 2, centre[0] + width / 2, centre[1] + height / 2)


def frame_boxes(scene: Scene, frame_pose: Pose, size: int) -> FrameBoxes:
    """People (left to right) then objects (left to right), xyxy in pixels."""
    boxes = []
    objects = [object_box(KINDS[scene.object_kinds[c]], frame_pose.object_centre[c]) for c in range(3)]
    for column in range(3):
        boxes.append(person_box(frame_pose.body_x[column], frame_pose.hand[column], frame_pose.contact[column],
                                objects[column][0]))
    boxes.extend(objects)
    scale = size / CANVAS
    array = np.clip(np.asarray(boxes, np.float32) * scale, 0, size)
    labels = np.array([PERSON_LABEL] * 3 + [OBJECT_CLASSES.index(KINDS[k]) for k in scene.object_kinds], np.int64)
    return FrameBoxes(array, np.ones(6, np.float32), labels, np.array([True] * 3 + [False] * 3))


# -- drawing -------------------------------------------------------------------------
SUPERSAMPLE = 4
RGB = {"red": (205, 45, 45), "green": (40, 160, 65), "blue": (45, 80, 210)}
SKIN = (238, 196, 160)
LIMB_COLOUR = (60, 60, 64)
OUTLINE = (40, 40, 40)
WALL = np.array([228, 226, 220], np.float32)
FLOOR = np.array([196, 190, 178], np.float32)
STAND = (150, 150, 155)


def _background(scene: Scene, size: int) -> np.ndarray:
    from PIL import Image

    big = size * SUPERSAMPLE
    texture = Image.fromarray(((scene.background + 1) * 127.5).astype(np.uint8)).resize((big, big), Image.BICUBIC)
    light = (np.asarray(texture, np.float32) / 127.5 - 1.0)[..., None] * 6.0
    rows = np.arange(big)[:, None, None]
    base = np.where(rows < GROUND_Y * big / CANVAS, WALL, FLOOR)
    return np.clip(base + light, 0, 255).astype(np.uint8)


def _shade(colour: tuple[int, int, int], jitter: np.ndarray, factor: float = 1.0) -> tuple[int, int, int]:
    return tuple(int(np.clip(c * factor + j, 0, 255)) for c, j in zip(colour, jitter))


def render(scene: Scene, frame: int, num_frames: int, size: int, background: np.ndarray) -> tuple[np.ndarray, FrameBoxes]:
    """One RGB frame (size x size, drawn 4x larger and averaged down) and its boxes."""
    from PIL import Image, ImageDraw

    frame_pose = pose(scene, frame, num_frames)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    k = size * SUPERSAMPLE / CANVAS

    def xy(*points):
        return [round(v * k) for point in points for v in point]

    def line(a, b, colour, width=LIMB):
        draw.line(xy(a, b), fill=colour, width=max(1, round(width * k)))
        for end in (a, b):  # round caps
            draw.ellipse(xy((end[0] - width / 2, end[1] - width / 2), (end[0] + width / 2, end[1] + width / 2)), fill=colour)

    for column in range(3):  # stands first: objects rest on them
        ox = frame_pose.object_centre[column][0]
        draw.rectangle(xy((ox - 6, STAND_TOP), (ox + 6, GROUND_Y)), fill=STAND)
    for column in range(3):
        bx, hand = frame_pose.body_x[column], frame_pose.hand[column]
        shirt = _shade(RGB[COLOURS[scene.person_colours[column]]], scene.shades[column])
        line((bx - 3, 68), (bx - 4, GROUND_Y), LIMB_COLOUR)
        line((bx + 3, 68), (bx + 4, GROUND_Y), LIMB_COLOUR)
        line((bx - 5, 44), (bx - 7, 64), LIMB_COLOUR)
        draw.rounded_rectangle(xy((bx - 5, 41), (bx + 5, 69)), radius=round(3 * k), fill=shirt, outline=OUTLINE,
                               width=max(1, round(0.6 * k)))
        line((bx + 5, 44), hand, LIMB_COLOUR)
        draw.ellipse(xy((bx - 6, 29), (bx + 6, 41)), fill=SKIN, outline=OUTLINE, width=max(1, round(0.6 * k)))
        if not frame_pose.contact[column]:
            draw.ellipse(xy((hand[0] - HAND, hand[1] - HAND), (hand[0] + HAND, hand[1] + HAND)), fill=SKIN)
    for column in range(3):
        kind = KINDS[scene.object_kinds[column]]
        _draw_object(draw, xy, kind, frame_pose.object_centre[column],
                     _shade(RGB[COLOURS[scene.object_colours[column]]], scene.shades[3 + column]), k)
        if frame_pose.contact[column]:  # the gripping hand lies on the object's edge
            hand = frame_pose.hand[column]
            draw.ellipse(xy((hand[0] - HAND, hand[1] - HAND), (hand[0] + HAND, hand[1] + HAND)), fill=SKIN,
                         outline=OUTLINE, width=max(1, round(0.4 * k)))
    frame_array = np.asarray(image.resize((size, size), Image.BOX))
    return frame_array, frame_boxes(scene, frame_pose, size)


def _draw_object(draw, xy, kind: str, centre: tuple[float, float], colour, k: float) -> None:
    """Ball: dotted disc. Box: striped square. Bottle: labelled body with a neck and a grey cap."""
    cx, cy = centre
    width, height = OBJECT_SIZE[kind]
    light = tuple(min(255, int(c * 0.45 + 140)) for c in colour)
    dark = tuple(int(c * 0.55) for c in colour)
    outline = max(1, round(0.6 * k))
    if kind == "ball":
        draw.ellipse(xy((cx - width / 2, cy - height / 2), (cx + width / 2, cy + height / 2)), fill=colour,
                     outline=OUTLINE, width=outline)
        for dx, dy in ((-2.5, -2.5), (2.5, -1.0), (-0.5, 3.0)):
            draw.ellipse(xy((cx + dx - 1.3, cy + dy - 1.3), (cx + dx + 1.3, cy + dy + 1.3)), fill=light)
    elif kind == "box":
        draw.rectangle(xy((cx - width / 2, cy - height / 2), (cx + width / 2, cy + height / 2)), fill=colour,
                       outline=OUTLINE, width=outline)
        for offset in (-3.5, 0.0, 3.5):
            draw.rectangle(xy((cx - width / 2 + 1, cy + offset - 0.8), (cx + width / 2 - 1, cy + offset + 0.8)), fill=dark)
    else:
        top = cy - height / 2
        draw.rectangle(xy((cx - 1.5, top - 4), (cx + 1.5, top)), fill=(170, 170, 175), outline=OUTLINE, width=outline)
        draw.rounded_rectangle(xy((cx - width / 2, top), (cx + width / 2, cy + height / 2)), radius=round(2.5 * k),
                               fill=colour, outline=OUTLINE, width=outline)
        draw.rectangle(xy((cx - width / 2 + 1, cy - 2), (cx + width / 2 - 1, cy + 2)), fill=light)


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
    """Write an mp4 (yuv420p) atomically. One encoder thread: x264 output is then byte-reproducible."""
    import av

    height, width = frames[0].shape[:2]
    with atomic_path(path) as tmp:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.thread_count = 1
            if codec == "libx264":
                stream.options = {"crf": "16", "preset": "medium"}
            else:
                stream.bit_rate = 4_000_000
            for array in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
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


def _check_arguments(videos_per_class: int, num_frames: int, size: int, fps: float) -> None:
    if videos_per_class < 1:
        raise UsageError(f"videos_per_class={videos_per_class}: need at least 1")
    if num_frames < 3:
        raise UsageError(f"num_frames={num_frames}: need at least 3 (one per turn)")
    if size < 32 or size % 2:
        raise UsageError(f"size={size}: need an even number of pixels, at least 32")
    if not fps > 0:
        raise UsageError(f"fps={fps}: must be positive")


def generate(out_dir: Path | str, videos_per_class: int = 12, num_frames: int = 24, size: int = 128,
             seed: int = 0, fps: float = 8, codec: str | None = None) -> Manifest:
    """Render the synthetic set into ``out_dir`` and return its manifest (see the module docstring).

    The same arguments give byte-identical ``manifest.json`` and
    ``annotations.jsonl``, and identical video files with the same encoder build.
    ``codec`` overrides the encoder choice (``"libx264"`` or ``"mpeg4"``).
    """
    _check_arguments(videos_per_class, num_frames, size, fps)
    out_dir = Path(out_dir)
    codec = codec or choose_codec()
    total = len(CLASS_RULES) * videos_per_class
    width = max(4, len(str(total - 1)))
    numbers = np.random.default_rng([seed, 1]).permutation(total)  # opaque ids: the id says nothing of the class
    (out_dir / VIDEO_DIR).mkdir(parents=True, exist_ok=True)
    videos, boxes, written = [], {}, set()
    for class_index, rule in enumerate(CLASS_RULES):
        order = np.random.default_rng([seed, 2, class_index]).permutation(videos_per_class)
        splits = class_splits(videos_per_class, class_index)
        for position, index in enumerate(order):
            video_id = f"syn{numbers[class_index * videos_per_class + index]:0{width}d}"
            scene = make_scene(rule, np.random.default_rng([seed, 3, class_index, int(index)]))
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
            videos.append(VideoEntry(
                id=video_id, source=source, labels=[class_index], split=splits[position], kind="video", group=None,
                fps=float(fps), num_frames=num_frames, annotations=ANNOTATIONS_FILE,
                extra={"scene": _scene_record(scene, num_frames)},
            ))
    for stale in (out_dir / VIDEO_DIR).iterdir():  # videos of an earlier, larger generation
        if VIDEO_NAME.match(stale.name) and stale.name not in written:
            stale.unlink()
    manifest = Manifest(
        dataset="synthetic", classes=list(CLASSES), multilabel=False, videos=videos,
        object_classes=list(OBJECT_CLASSES),
        extra={
            "generator": "hoitool.datasets.synthetic", "generator_version": GENERATOR_VERSION, "codec": codec,
            "seed": seed, "videos_per_class": videos_per_class, "num_frames": num_frames, "size": size, "fps": fps,
            "class_context": {rule.name: rule.context for rule in CLASS_RULES},
        },
    )
    return write_prepared(manifest, out_dir, SkipLog(), boxes=boxes)


def _scene_record(scene: Scene, num_frames: int) -> dict:
    """The ground truth behind the pixels, per column (left to right), for checks and docs; models never read it."""
    return {
        "person_colours": [COLOURS[c] for c in scene.person_colours],
        "object_colours": [COLOURS[c] for c in scene.object_colours],
        "object_kinds": [KINDS[k] for k in scene.object_kinds],
        "turns": [{"column": column, "frames": [start, end]}
                  for column, (start, end) in zip(scene.turn_columns, turn_bounds(num_frames))],
    }
