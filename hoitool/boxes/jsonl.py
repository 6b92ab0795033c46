"""The boxes JSON-lines format (docs/boxes-jsonl.md).

One line per (video, frame)::

    {"video": "abc", "frame": 12, "boxes": [[x1, y1, x2, y2], ...],
     "scores": [0.9, ...], "labels": [3, ...], "is_person": [true, ...]}

``frame`` is the 0-based index of the decoded frame; boxes are xyxy in source
pixels. ``scores`` (default 1), ``labels`` (default -1 = no class) and
``is_person`` (default false) are optional. The same format serves the
datasets' own boxes (e.g. the synthetic set's ground truth) and the import of
an external detector's output (detectron2, MMDetection, Ultralytics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hoitool.errors import UsageError


@dataclass
class FrameBoxes:
    boxes: np.ndarray  # (n, 4) float32 xyxy
    scores: np.ndarray  # (n,) float32
    labels: np.ndarray  # (n,) int64, -1 = no class
    is_person: np.ndarray  # (n,) bool

    @classmethod
    def empty(cls) -> FrameBoxes:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), np.zeros(0, bool))


def parse_record(record: dict, where: str) -> tuple[str, int, FrameBoxes]:
    """Validate one JSON-lines record; raise a one-line UsageError naming ``where``."""
    try:
        video = str(record["video"])
        frame = int(record["frame"])
        boxes = np.asarray(record.get("boxes", []), dtype=np.float32).reshape(-1, 4)
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{where}: bad box record ({exc})") from None
    n = len(boxes)

    def column(name, default, dtype):
        values = record.get(name)
        if values is None:
            return np.full(n, default, dtype=dtype)
        array = np.asarray(values, dtype=dtype).reshape(-1)
        if len(array) != n:
            raise UsageError(f"{where}: video {video!r} frame {frame}: {len(array)} {name} for {n} boxes")
        return array

    item = FrameBoxes(
        boxes, column("scores", 1.0, np.float32), column("labels", -1, np.int64), column("is_person", False, bool)
    )
    if frame < 0:
        raise UsageError(f"{where}: video {video!r}: negative frame index {frame}")
    if n and (not np.isfinite(boxes).all() or (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
        raise UsageError(f"{where}: video {video!r} frame {frame}: boxes must be finite xyxy with x2>=x1, y2>=y1")
    return video, frame, item


def read_boxes_jsonl(path: Path | str, video: str | None = None) -> dict[str, dict[int, FrameBoxes]]:
    """Read a boxes file into ``{video: {frame: FrameBoxes}}`` (optionally one video only)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: boxes file not found")
    result: dict[str, dict[int, FrameBoxes]] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            if video is not None and str(record.get("video")) != video:
                continue
            vid, frame, item = parse_record(record, f"{path}:{number}")
            frames = result.setdefault(vid, {})
            if frame in frames:  # several lines for one frame: concatenate
                old = frames[frame]
                item = FrameBoxes(
                    *(
                        np.concatenate([a, b])
                        for a, b in zip(
                            (old.boxes, old.scores, old.labels, old.is_person),
                            (item.boxes, item.scores, item.labels, item.is_person),
                            strict=False,
                        )
                    )
                )
            frames[frame] = item
    return result


def write_boxes_jsonl(path: Path | str, video: str, frames: dict[int, FrameBoxes]) -> None:
    """Append one video's boxes (used by dataset generators and converters)."""
    with open(path, "a", encoding="utf-8") as handle:
        for frame in sorted(frames):
            item = frames[frame]
            handle.write(
                json.dumps(
                    {
                        "video": video,
                        "frame": int(frame),
                        "boxes": np.round(item.boxes.astype(float), 2).tolist(),
                        "scores": np.round(item.scores.astype(float), 4).tolist(),
                        "labels": item.labels.astype(int).tolist(),
                        "is_person": item.is_person.astype(bool).tolist(),
                    }
                )
                + "\n"
            )
