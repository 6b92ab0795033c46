"""Prepare CAD-120 from its official raw layout (docs/datasets.md#cad-120).

Per subject ``SubjectN_annotations/<activity>/`` holds ``activityLabel.txt``
(videos and their objects), ``labeling.txt`` (sub-activity segments),
``<vid>_objK.txt`` (object boxes per frame) and ``<vid>.txt`` (the skeleton);
frames are ``SubjectN_rgbd_images/<activity>/<vid>/RGB_<n>.png``, beside the
``Depth_<n>.png`` images of the same folder: the manifest names the frames with
the pattern ``<vid>/RGB_%d.png`` so only the RGB images are counted and read,
in the order of ``<n>`` (frame ``<n>`` of the annotations is index ``<n> - 1``).

The dataset's own boxes go to ``annotations.jsonl``: every visible object box,
labelled by object type, and a person box derived from the skeleton (the
joints projected into the image, see ``KINECT``). Splits are leave-one-subject-out.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hoitool.boxes.jsonl import FrameBoxes
from hoitool.datasets.common import ANNOTATIONS_FILE, SkipLog, stored_path, stratified_split, write_prepared
from hoitool.datasets.registry import register_preparer
from hoitool.errors import UsageError
from hoitool.manifest import Manifest, VideoEntry
from hoitool.settings.prepare import Cad120Settings

OBJECT_TYPES = ("medcinebox", "cup", "bowl", "box", "milk", "book", "microwave", "plate", "remote", "cloth")
PERSON = "person"
OBJECT_CLASSES = (*OBJECT_TYPES, PERSON)  # box labels: object types, then the person
SUB_ACTIVITIES = (
    "reaching",
    "moving",
    "pouring",
    "eating",
    "drinking",
    "opening",
    "placing",
    "closing",
    "null",
    "cleaning",
)
NO_SUBJECT_VIDEOS = {"0505003751": "known CAD-120 video that belongs to no subject"}
IMAGE_SIZE = (640, 480)  # width, height of the RGB frames
SKELETON_FIELDS = 1 + 11 * 14 + 4 * 4  # frame, 11 joints x (9 orientation + conf + xyz + conf), 4 joints x (xyz + conf)
OBJECT_FIELDS = 12  # frame, object id, x1 y1 x2 y2, 6 transform values
SUBJECT_DIR = re.compile(r"^(Subject\d+)_annotations$")
OBJECT_FILE = re.compile(r"^(.+)_obj(\d+)\.txt$")
FRAME_PATTERN = "RGB_%d.png"  # the RGB frames of a video folder (Depth_<n>.png lie beside them)
RGB_FRAME = re.compile(r"^RGB_(\d+)\.png$")
VIDEO_FILE = re.compile(r"^(\d+)(?:_[A-Za-z]+\d*)?\.txt$")  # <vid>.txt, <vid>_objK.txt, <vid>_globalTransform.txt


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole projection of the skeleton's camera coordinates (mm, y up) to RGB pixels."""

    fx: float
    fy: float
    cx: float
    cy: float


# The field of view of the Kinect v1 / OpenNI depth camera (x/z = 1.1147 over
# 640 px, y/z = 0.8336 over 480 px, principal point at the centre), as used to
# project CAD-120 skeletons to the image by ASSIGN's public CAD-120 preprocessing
# (function convert_from_world_to_image_coordinates); OpenNI's own constants
# (1.122133 and 0.84176) differ by under 1%. Not a per-sensor calibration.
KINECT = Intrinsics(fx=640 / 1.1147, fy=480 / 0.8336, cx=320.0, cy=240.0)


def _fields(line: str) -> list[str]:
    """Comma-separated fields without the optional trailing comma and spaces."""
    fields = [field.strip() for field in line.strip().split(",")]
    return fields[:-1] if fields and fields[-1] == "" else fields


def read_activity_labels(path: Path) -> dict[str, dict[int, str]]:
    """``activityLabel.txt`` -> ``{video: {object id: object type}}``."""
    if not path.is_file():
        raise UsageError(f"{path}: activityLabel.txt not found")
    videos: dict[str, dict[int, str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = _fields(line)
        if not fields:
            continue
        if len(fields) < 3:
            raise UsageError(f"{path}:{number}: expected `id,activity_id,subject_id,object_id:object_type,...`")
        objects: dict[int, str] = {}
        for item in fields[3:]:
            object_id, _, object_type = item.partition(":")
            if not object_id.isdigit() or object_type not in OBJECT_TYPES:
                raise UsageError(
                    f"{path}:{number}: bad object {item!r} (expected `id:type`, type one of {', '.join(OBJECT_TYPES)})"
                )
            objects[int(object_id)] = object_type
        videos[fields[0]] = objects
    return videos


def read_segments(path: Path) -> dict[str, list[list]]:
    """``labeling.txt`` -> ``{video: [[start, end, sub_activity], ...]}`` as 0-based inclusive frame indices."""
    if not path.is_file():
        raise UsageError(f"{path}: labeling.txt not found")
    segments: dict[str, list[list]] = defaultdict(list)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = _fields(line.replace(" ", ""))
        if not fields:
            continue
        try:
            start, end = int(fields[1]), int(fields[2])
            name = fields[3]
        except (IndexError, ValueError):
            raise UsageError(f"{path}:{number}: expected `id,start_frame,end_frame,sub-activity,...`") from None
        if not 1 <= start <= end:
            raise UsageError(f"{path}:{number}: bad frame range {start}..{end} (1-based, start <= end)")
        segments[fields[0]].append([start - 1, end - 1, name])
    return dict(segments)


def read_object_boxes(path: Path) -> dict[int, np.ndarray]:
    """``<vid>_objK.txt`` -> ``{frame index: xyxy}`` for the frames where the object is visible."""
    boxes: dict[int, np.ndarray] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = _fields(line)
        if not fields or fields == ["END"]:
            continue
        if len(fields) != OBJECT_FIELDS:
            raise UsageError(
                f"{path}:{number}: expected {OBJECT_FIELDS} fields `frame,object_id,x1,y1,x2,y2,t1..t6`, got {len(fields)}"
            )
        try:
            frame = int(fields[0])
            x1, y1, x2, y2 = (float(value) for value in fields[2:6])
        except ValueError:
            raise UsageError(f"{path}:{number}: non-numeric frame or box") from None
        if frame < 1:
            raise UsageError(f"{path}:{number}: frame numbers start at 1, got {frame}")
        if (x1, y1, x2, y2) == (0, 0, 0, 0):  # not visible in this frame
            continue
        boxes[frame - 1] = np.array([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], np.float32)
    return boxes


def read_skeleton(path: Path) -> dict[int, np.ndarray]:
    """``<vid>.txt`` -> ``{frame index: (15, 4) joint x, y, z, position confidence}``."""
    joints: dict[int, np.ndarray] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = _fields(line)
        if not fields:
            continue
        if fields == ["END"]:
            break
        if len(fields) != SKELETON_FIELDS:
            raise UsageError(f"{path}:{number}: expected {SKELETON_FIELDS} skeleton fields, got {len(fields)}")
        try:
            frame = int(fields[0])
            values = np.array(fields[1:], np.float64)
        except ValueError:
            raise UsageError(f"{path}:{number}: non-numeric skeleton field") from None
        full = values[: 11 * 14].reshape(11, 14)[:, 10:14]  # skip the 3x3 orientation and its confidence
        positions_only = values[11 * 14 :].reshape(4, 4)
        joints[frame - 1] = np.concatenate([full, positions_only])
    return joints


def person_box(joints: np.ndarray, intrinsics: Intrinsics, margin: float) -> np.ndarray | None:
    """Bounding box of the confident joints projected to the image, padded by ``margin``
    of its size on each side (joints are body centres, not the body's outline)."""
    valid = (joints[:, 3] > 0) & (joints[:, 2] > 0)
    if not valid.any():
        return None
    x, y, z = joints[valid, 0], joints[valid, 1], joints[valid, 2]
    u = intrinsics.cx + intrinsics.fx * x / z
    v = intrinsics.cy - intrinsics.fy * y / z  # camera y points up, image rows down
    x1, y1, x2, y2 = u.min(), v.min(), u.max(), v.max()
    pad_x, pad_y = margin * (x2 - x1), margin * (y2 - y1)
    width, height = IMAGE_SIZE
    box = np.array(
        [max(x1 - pad_x, 0.0), max(y1 - pad_y, 0.0), min(x2 + pad_x, width), min(y2 + pad_y, height)], np.float32
    )
    if box[2] <= box[0] or box[3] <= box[1]:  # entirely outside the image
        return None
    return box


def video_boxes(
    annotation_dir: Path, video: str, objects: dict[int, str], intrinsics: Intrinsics, margin: float
) -> dict[int, FrameBoxes]:
    """Per frame: the person box (if the skeleton is seen) then the visible objects by id."""
    per_frame: dict[int, list[tuple[np.ndarray, int, bool]]] = defaultdict(list)
    skeleton = annotation_dir / f"{video}.txt"
    if skeleton.is_file():
        for frame, joints in read_skeleton(skeleton).items():
            box = person_box(joints, intrinsics, margin)
            if box is not None:
                per_frame[frame].append((box, OBJECT_CLASSES.index(PERSON), True))
    object_files = []
    for path in annotation_dir.glob(f"{video}_obj*.txt"):
        match = OBJECT_FILE.match(path.name)
        if match and match.group(1) == video:
            object_files.append((int(match.group(2)), path))
    for object_id, path in sorted(object_files):
        if object_id not in objects:
            raise UsageError(f"{path}: object {object_id} is not listed for video {video} in activityLabel.txt")
        label = OBJECT_TYPES.index(objects[object_id])
        for frame, box in read_object_boxes(path).items():
            per_frame[frame].append((box, label, False))
    return {
        frame: FrameBoxes(
            boxes=np.stack([box for box, _, _ in items]).astype(np.float32),
            scores=np.ones(len(items), np.float32),
            labels=np.array([label for _, label, _ in items], np.int64),
            is_person=np.array([person for _, _, person in items], bool),
        )
        for frame, items in per_frame.items()
    }


@dataclass
class _Video:
    id: str
    subject: str
    activity: str
    annotation_dir: Path
    objects: dict[int, str]
    segments: list[list]


def _scan(root: Path, log: SkipLog) -> list[_Video]:
    """Every video listed in an ``activityLabel.txt``; ids found only elsewhere are skipped with a warning."""
    subject_dirs = sorted(
        (match.group(1), path) for path in root.iterdir() if path.is_dir() and (match := SUBJECT_DIR.match(path.name))
    )
    if not subject_dirs:
        raise UsageError(f"{root}: no SubjectN_annotations folders (is this the CAD-120 root?)")
    videos: list[_Video] = []
    seen: dict[str, Path] = {}
    for subject, subject_dir in subject_dirs:
        for activity_dir in sorted(path for path in subject_dir.iterdir() if path.is_dir()):
            listed = read_activity_labels(activity_dir / "activityLabel.txt")
            segments = read_segments(activity_dir / "labeling.txt")
            found_elsewhere = set(segments) | {
                match.group(1) for path in activity_dir.glob("*.txt") if (match := VIDEO_FILE.match(path.name))
            }
            for video in sorted(found_elsewhere - set(listed) - set(NO_SUBJECT_VIDEOS)):
                log.skip(video, "not listed in activityLabel.txt: belongs to no subject", activity_dir)
            for video, objects in listed.items():
                if video in seen:
                    raise UsageError(
                        f"{activity_dir / 'activityLabel.txt'}: video {video} also listed in {seen[video]}"
                    )
                seen[video] = activity_dir / "activityLabel.txt"
                videos.append(_Video(video, subject, activity_dir.name, activity_dir, objects, segments.get(video, [])))
    for video in sorted(NO_SUBJECT_VIDEOS):
        if video in seen or any(root.glob(f"Subject*_annotations/*/{video}*.txt")):
            log.skip(video, NO_SUBJECT_VIDEOS[video])
    return [video for video in videos if video.id not in NO_SUBJECT_VIDEOS]


def _splits(videos: list[_Video], fold: str | None, val: str | float, seed: int) -> tuple[dict[str, str], dict]:
    """Leave-one-subject-out: the fold's subject is test; val is one training subject or a
    stratified fraction of the training videos."""
    subjects = sorted({video.subject for video in videos})
    if fold is not None and fold not in subjects:
        raise UsageError(f"--fold {fold!r}: not a subject of this dataset (found: {', '.join(subjects)})")
    if len(subjects) < 2:
        raise UsageError(f"CAD-120 needs at least 2 subjects for a subject-wise split, found {subjects}")
    test_subject = fold or subjects[-1]
    notes = (
        []
        if fold
        else [
            f"no fold given: {test_subject} (the last subject) is test; use --fold SubjectN for each of the "
            "leave-one-subject-out folds and average them"
        ]
    )
    splits = {video.id: "test" for video in videos if video.subject == test_subject}
    training = [video for video in videos if video.subject != test_subject]
    if isinstance(val, str):
        if val not in subjects or val == test_subject:
            raise UsageError(
                f"--val {val!r}: expected a training subject ({', '.join(s for s in subjects if s != test_subject)}) or a fraction"
            )
        splits.update({video.id: "val" if video.subject == val else "train" for video in training})
        val_rule = f"subject {val}"
    else:
        fraction = float(val)
        splits.update(stratified_split({video.id: video.activity for video in training}, fraction, 0.0, seed))
        val_rule = f"{fraction:g} of the training subjects' videos, stratified by activity, seed {seed}"
    if "train" not in splits.values():
        raise UsageError(f"no training videos left with test subject {test_subject} and val {val_rule}")
    return splits, {"fold": fold, "test_subject": test_subject, "val": val_rule, "notes": notes}


def _rgb_frame_count(frames_dir: Path) -> int | None:
    """Number of ``RGB_<n>.png`` frames, or None unless they are numbered 1..N without gaps."""
    numbers = sorted(int(match.group(1)) for path in frames_dir.iterdir() if (match := RGB_FRAME.match(path.name)))
    return len(numbers) if numbers == list(range(1, len(numbers) + 1)) else None


def prepare_cad120(
    root: Path | str,
    out: Path | str,
    fold: str | None = None,
    val: str | float = 0.2,  # a training subject's name, or a fraction of the training videos
    seed: int = 0,
    strict: bool = False,
    intrinsics: Intrinsics = KINECT,
    person_margin: float = 0.1,
) -> Manifest:
    """Manifest and boxes of CAD-120 (frame folders, one activity label per video, group = subject)."""
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UsageError(f"{root}: CAD-120 root not found")
    log = SkipLog(strict)
    found = _scan(root, log)
    classes = sorted({video.activity for video in found})
    splits, split_info = _splits(found, fold, val, seed)
    videos: list[VideoEntry] = []
    boxes: dict[str, dict[int, FrameBoxes]] = {}
    for video in found:
        frames_dir = root / f"{video.subject}_rgbd_images" / video.activity / video.id
        if not (frames_dir / "RGB_1.png").is_file():
            log.missing(video.id, frames_dir / "RGB_1.png", "frames")
            continue
        num_frames = _rgb_frame_count(frames_dir)
        if num_frames is None:
            log.skip(
                video.id,
                "RGB_<n>.png numbers are not 1..N without gaps (annotation frames would not match)",
                frames_dir,
            )
            continue
        boxes[video.id] = video_boxes(video.annotation_dir, video.id, video.objects, intrinsics, person_margin)
        videos.append(
            VideoEntry(
                id=video.id,
                source=stored_path(frames_dir / FRAME_PATTERN, out),
                labels=[classes.index(video.activity)],
                split=splits[video.id],
                kind="frames",
                group=video.subject,
                num_frames=num_frames,
                annotations=stored_path(out / ANNOTATIONS_FILE, out),
                objects=[video.objects[object_id] for object_id in sorted(video.objects)],
                extra={"segments": video.segments, "object_ids": sorted(video.objects)},
            )
        )
    manifest = Manifest(
        dataset="cad120",
        classes=classes,
        multilabel=False,
        videos=videos,
        object_classes=list(OBJECT_CLASSES),
        extra={
            **split_info,
            "sub_activities": list(SUB_ACTIVITIES),
            "person_box": {"intrinsics": asdict(intrinsics), "margin": person_margin, "image_size": list(IMAGE_SIZE)},
            "segments_format": "videos' extra.segments: [start, end, sub_activity], 0-based inclusive frame indices (labeling.txt minus 1)",
            "frame_pattern": FRAME_PATTERN,
            "objects_format": "videos' objects: the object types of activityLabel.txt in object-id order (extra.object_ids)",
        },
    )
    return write_prepared(manifest, out, log, boxes=boxes, where=root)


@register_preparer("cad120", Cad120Settings)
def build(config: Cad120Settings, out: Path) -> Manifest:
    """CAD-120: frames, activity labels, object and person boxes, sub-activity segments."""
    keywords = config.model_dump(exclude={"root", "intrinsics"})  # the other keys are keyword arguments
    camera = Intrinsics(**config.intrinsics.model_dump())
    return prepare_cad120(Path(str(config.root)), out, intrinsics=camera, **keywords)
