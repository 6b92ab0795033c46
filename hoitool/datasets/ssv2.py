"""Prepare Something-Something v2 from its official annotation files (docs/datasets.md#something-something-v2).

``something-something-v2-{train,validation}.json`` give each video's template;
the template without its brackets is looked up in ``...-labels.json`` (174
classes). The official validation set becomes "val"; nothing else is held out.
The test JSON holds ids only: those videos have no label, the manifest is
single-label, so they are left out (their count is recorded) rather than given a
fake label. A video's ``placeholders`` (the objects filling the template) are its
object labels.

Something-Else boxes (``--boxes``): the published annotation files, each a JSON
object ``{video id: [frame, ...]}`` (the release is split into several parts) or
one video's list of frames; a frame is ``{"name": "<id>/0001.jpg", "labels":
[{"box2d": {"x1", "y1", "x2", "y2"}, "category": "hand" | <object name>,
"standard_category": "hand" | "0000" | "0001" ..., "gt_annotation": ...}]}``.
Frame ``<id>/<n>.jpg`` is decoded frame ``n - 1`` (the annotations assume the
videos' 12 fps); hands are the person nodes, objects are labelled by their slot
(``standard_category`` ``000k`` = the k-th placeholder).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hoitool.boxes.jsonl import FrameBoxes
from hoitool.datasets.common import ANNOTATIONS_FILE, SkipLog, stored_path, write_prepared
from hoitool.datasets.registry import register_preparer
from hoitool.errors import UsageError
from hoitool.manifest import Manifest, VideoEntry
from hoitool.settings.prepare import Ssv2Settings

PREFIX = "something-something-v2"
LABELS_FILE = f"{PREFIX}-labels.json"
SPLIT_FILES = {"train": f"{PREFIX}-train.json", "val": f"{PREFIX}-validation.json"}
TEST_FILE = f"{PREFIX}-test.json"
HAND = "hand"
FRAME_NAME = re.compile(r"^(?P<video>[^/]+)/(?P<number>\d+)\.jpg$")  # "151201/0001.jpg"
OBJECT_SLOT = re.compile(r"^\d{4}$")  # standard_category of the k-th placeholder: "0000", "0001", ...


def _load_json(path: Path):
    if not path.is_file():
        raise UsageError(f"{path}: Something-Something v2 annotation file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from None


def template_to_class(template: str) -> str:
    """``"Putting [something] onto [something]"`` -> ``"Putting something onto something"``."""
    return template.replace("[", "").replace("]", "")


def read_labels(path: Path) -> list[str]:
    """``{"class name": "index"}`` -> class names in index order (indices must be 0..n-1)."""
    data = _load_json(path)
    if not isinstance(data, dict) or not data:
        raise UsageError(f"{path}: expected a non-empty object mapping class names to indices")
    by_index: dict[int, str] = {}
    for name, value in data.items():
        try:
            index = int(value)
        except (TypeError, ValueError):
            raise UsageError(f"{path}: class {name!r} has index {value!r}, expected an integer") from None
        if index in by_index:
            raise UsageError(f"{path}: index {index} used by both {by_index[index]!r} and {name!r}")
        by_index[index] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise UsageError(f"{path}: class indices must be 0..{len(by_index) - 1} without gaps")
    return [by_index[index] for index in range(len(by_index))]


def read_split(path: Path, class_index: dict[str, int]) -> list[tuple[str, int, list[str]]]:
    """``[(id, class index, placeholders)]`` of one labelled split file."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of videos")
    result = []
    for position, item in enumerate(data):
        where = f"{path}: entry {position}"
        if not isinstance(item, dict) or "id" not in item or "template" not in item:
            raise UsageError(f"{where}: expected an object with 'id' and 'template'")
        video_id = str(item["id"])
        name = template_to_class(str(item["template"]))
        if name not in class_index:
            raise UsageError(
                f"{where} (id {video_id}): template {item['template']!r} is not a class of the labels file"
            )
        placeholders = item.get("placeholders", [])
        if not isinstance(placeholders, list) or not all(isinstance(p, str) for p in placeholders):
            raise UsageError(f"{where} (id {video_id}): 'placeholders' must be a list of object names")
        result.append((video_id, class_index[name], placeholders))
    return result


def object_classes(slots: int) -> list[str]:
    """Box labels of Something-Else boxes: 0 = hand, k + 1 = the k-th placeholder's object."""
    return [HAND] + [f"object {k}" for k in range(slots)]


def _frame_boxes(frame, where: str, video: str) -> tuple[int, FrameBoxes]:
    """One annotated frame -> (decoded frame index, its boxes); refuses anything not in the published form."""
    if not isinstance(frame, dict) or not isinstance(frame.get("labels"), list):
        raise UsageError(f"{where}: video {video}: expected frames with 'name' and a 'labels' list")
    match = FRAME_NAME.match(str(frame.get("name", "")))
    if match is None or match["video"] != video or int(match["number"]) < 1:
        raise UsageError(
            f"{where}: video {video}: frame name {frame.get('name')!r} is not '{video}/<n>.jpg' (n from 1)"
        )
    boxes, labels, hands = [], [], []
    for label in frame["labels"]:
        try:
            box = label["box2d"]
            x1, y1, x2, y2 = (float(box[key]) for key in ("x1", "y1", "x2", "y2"))
            kind = str(label["standard_category"])
        except (KeyError, TypeError, ValueError):
            raise UsageError(
                f"{where}: video {video} frame {frame['name']}: expected labels with box2d x1,y1,x2,y2 "
                "and standard_category"
            ) from None
        if kind != HAND and not OBJECT_SLOT.match(kind):
            raise UsageError(
                f"{where}: video {video} frame {frame['name']}: standard_category {kind!r} is neither "
                f"'{HAND}' nor an object slot such as '0000'"
            )
        boxes.append([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
        labels.append(0 if kind == HAND else int(kind) + 1)
        hands.append(kind == HAND)
    item = FrameBoxes(
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        scores=np.ones(len(boxes), np.float32),
        labels=np.array(labels, np.int64),
        is_person=np.array(hands, bool),
    )
    return int(match["number"]) - 1, item


def read_something_else(paths: Sequence[Path | str]) -> dict[str, dict[int, FrameBoxes]]:
    """Something-Else annotation files (parts ``{video: [frames]}`` or one video's frame list) -> boxes per video."""
    videos: dict[str, dict[int, FrameBoxes]] = {}
    source: dict[str, Path] = {}
    for path in map(Path, paths):
        data = _load_json(path)
        if isinstance(data, list):  # one video's frames: the id is in the frame names
            first = FRAME_NAME.match(str(data[0].get("name", ""))) if data and isinstance(data[0], dict) else None
            if first is None:
                raise UsageError(f"{path}: expected frames named '<video>/<n>.jpg'")
            data = {first["video"]: data}
        if not isinstance(data, dict):
            raise UsageError(
                f"{path}: expected an object mapping video ids to frame lists (Something-Else annotations)"
            )
        for video, frames in data.items():
            video = str(video)
            if video in source:
                raise UsageError(f"{path}: video {video} is also in {source[video]}")
            if not isinstance(frames, list):
                raise UsageError(f"{path}: video {video}: expected a list of frames")
            source[video] = path
            per_frame: dict[int, FrameBoxes] = {}
            for frame in frames:
                index, item = _frame_boxes(frame, str(path), video)
                if index in per_frame:
                    raise UsageError(f"{path}: video {video}: frame {frame['name']} listed twice")
                if len(item.boxes):
                    per_frame[index] = item
            videos[video] = per_frame
    return videos


def _count_test_videos(path: Path) -> int:
    """Size of the (unlabelled) test list, recorded so its omission is visible."""
    if not path.is_file():
        return 0
    data = _load_json(path)
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of videos")
    return len(data)


def prepare_ssv2(
    root: Path | str,
    out: Path | str,
    video_dir: str = ".",
    strict: bool = False,
    boxes: Sequence[Path | str] | None = None,
) -> Manifest:
    """Manifest of Something-Something v2 (train and validation; videos ``<video_dir>/<id>.webm``),
    with the Something-Else boxes of ``boxes`` (annotation files) as the dataset's own boxes."""
    root, out = Path(root), Path(out)
    annotated = read_something_else(boxes) if boxes else {}  # read (and checked) before anything is written
    classes = read_labels(root / LABELS_FILE)
    class_index = {name: index for index, name in enumerate(classes)}
    log = SkipLog(strict)
    videos: list[VideoEntry] = []
    seen: set[str] = set()
    for split, file_name in SPLIT_FILES.items():
        for video_id, label, placeholders in read_split(root / file_name, class_index):
            if video_id in seen:
                raise UsageError(f"{root / file_name}: video {video_id!r} listed twice")
            seen.add(video_id)
            source = root / video_dir / f"{video_id}.webm"
            if not source.is_file():
                log.missing(video_id, source)
                continue
            has_boxes = bool(annotated.get(video_id))
            videos.append(
                VideoEntry(
                    id=video_id,
                    source=stored_path(source, out),
                    labels=[label],
                    split=split,
                    objects=placeholders,
                    annotations=stored_path(out / ANNOTATIONS_FILE, out) if has_boxes else None,
                )
            )
    omitted = _count_test_videos(root / TEST_FILE)
    kept = {video.id for video in videos}
    slots = max(
        (int(label) for frames in annotated.values() for item in frames.values() for label in item.labels), default=0
    )
    box_info = None
    if boxes:
        box_info = {
            "files": [stored_path(path, out) for path in boxes],
            "videos_with_boxes": sum(1 for video in videos if video.annotations),
            "videos_without_boxes": sum(1 for video in videos if not video.annotations),
            "boxes_for_other_videos": len(set(annotated) - kept),
            "labels": "0 = hand (is_person), k + 1 = object slot k (standard_category 000k, the k-th placeholder)",
        }
    manifest = Manifest(
        dataset="ssv2",
        classes=classes,
        multilabel=False,
        videos=videos,
        object_classes=object_classes(slots) if boxes else [],
        extra={
            "omitted_test_videos": omitted,
            "notes": [f"{TEST_FILE} has no labels: its videos are not in this manifest"] if omitted else [],
            "something_else": box_info,
        },
    )
    kept_boxes = {video: frames for video, frames in annotated.items() if video in kept and frames}
    return write_prepared(manifest, out, log, boxes=kept_boxes, where=root)


@register_preparer("ssv2", Ssv2Settings)
def build(config: Ssv2Settings, out: Path) -> Manifest:
    """Something-Something v2: train -> train, validation -> val; the unlabelled test list is left out."""
    keywords = config.model_dump(exclude={"root"})  # the settings' keys are the function's keyword arguments
    return prepare_ssv2(Path(str(config.root)), out, **keywords)
