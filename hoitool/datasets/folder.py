"""Prepare a plain folder of videos, and the building blocks every preparer shares.

Two layouts (docs/datasets.md):

* class per subfolder: ``root/<class>/<video>.mp4`` (or ``.avi .webm .mkv .mov``)
  or ``root/<class>/<video>/`` holding the frames as images;
* a flat folder ``root/<id>.mp4`` (or ``root/<id>/``) with a labels CSV whose
  rows are ``id,label`` or ``id,label1;label2`` (multi-label).

The split is stratified by class (by label set for multi-label data) and
depends only on the file names and the seed, never on the listing order.

The shared helpers (``stored_path``, ``SkipLog``, ``hold_out_groups``,
``write_prepared``) live here because the folder preparer is the generic one
the dataset-specific preparers specialise.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import defaultdict
from pathlib import Path

from hoitool.boxes.jsonl import FrameBoxes, write_boxes_jsonl
from hoitool.errors import UsageError
from hoitool.io.atomic import atomic_path, write_text
from hoitool.manifest import Manifest, VideoEntry
from hoitool.video.reader import (
    PATTERN_FIELD,
    MixedFramesError,
    VideoReadError,
    list_frame_files,
)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MANIFEST_FILE = "manifest.json"
ANNOTATIONS_FILE = "annotations.jsonl"
WARNINGS_FILE = "prepare_warnings.jsonl"
DATASET_MARKER = (
    ".hoitool-dataset.json"  # written first by `hoitool prepare`: this folder is hoitool's prepared dataset
)
DATASET_FORMAT = "hoitool.dataset/1"


# -- shared by every preparer -------------------------------------------------
def stored_path(path: Path | str, out: Path | str) -> str:
    """How a path is written in the manifest: relative to OUT when inside it (so the
    prepared set can move), else absolute. Symlinks are kept, not followed."""
    absolute = Path(os.path.abspath(path))
    out_dir = Path(os.path.abspath(out))
    if absolute.is_relative_to(out_dir):
        return absolute.relative_to(out_dir).as_posix()
    return str(absolute)


def count_images(source: Path, hint: str = "") -> int:
    """Frames of a frame folder or frame pattern as the extraction stages will read them (0 if none).

    A folder mixing image series (e.g. RGB and depth) is a one-line UsageError here,
    at prepare time, rather than a doubled frame count that every stage trusts.
    """

    try:
        return len(list_frame_files(source))
    except MixedFramesError as exc:
        raise UsageError(f"{exc}{hint}") from None
    except VideoReadError:
        return 0


class SkipLog:
    """Videos left out of the manifest and why; written to ``OUT/prepare_warnings.jsonl``.

    A missing video is skipped, not fatal, unless ``strict``: one absent file
    should not cost a whole dataset's preparation.
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self.records: list[dict] = []

    def missing(self, video: str, path: Path, what: str = "video") -> None:
        if self.strict:
            raise UsageError(f"{path}: {what} of {video!r} not found (without --strict it would be skipped)")
        self.records.append({"video": video, "reason": f"{what} not found", "path": str(path)})

    def skip(self, video: str, reason: str, path: Path | None = None) -> None:
        """A video left out for a known dataset reason (never fatal, even with --strict)."""
        record = {"video": video, "reason": reason}
        if path is not None:
            record["path"] = str(path)
        self.records.append(record)

    def write(self, out: Path) -> None:
        path = out / WARNINGS_FILE
        if self.records:
            write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in self.records))
        elif path.exists():
            path.unlink()


def hold_out_groups(videos_per_group: dict[str, int], fraction: float, seed: int) -> set[str]:
    """Groups (e.g. subjects) held out to hold about ``fraction`` of the videos.

    The groups are shuffled by ``seed`` from their sorted order (so the choice is
    deterministic) and taken in that order while each brings the held-out count
    closer to the target; at least one group always stays in.
    """
    if not 0 <= fraction < 1:
        raise UsageError(f"validation fraction {fraction} must be in [0, 1)")
    groups = sorted(videos_per_group)
    random.Random(seed).shuffle(groups)
    target = fraction * sum(videos_per_group.values())
    held: set[str] = set()
    taken = 0
    for group in groups[:-1]:
        if taken >= target:
            break
        if taken + videos_per_group[group] - target < target - taken:  # closer with it than without
            held.add(group)
            taken += videos_per_group[group]
    return held


def write_prepared(
    manifest: Manifest,
    out: Path,
    log: SkipLog,
    boxes: dict[str, dict[int, FrameBoxes]] | None = None,
    where: Path | None = None,
) -> Manifest:
    """Write boxes, warnings and finally ``manifest.json`` (last: its presence means done)."""
    if not manifest.videos:
        raise UsageError(f"{where or out}: no usable videos found ({len(log.records)} skipped)")
    out.mkdir(parents=True, exist_ok=True)
    annotations = out / ANNOTATIONS_FILE
    if boxes:
        with atomic_path(annotations) as tmp:
            for video in sorted(boxes):
                write_boxes_jsonl(tmp, video, boxes[video])
    elif annotations.exists():
        annotations.unlink()
    log.write(out)
    manifest.extra["skipped_videos"] = len(log.records)
    manifest.root = out.resolve()
    manifest.save(out / MANIFEST_FILE)
    return manifest


# -- the folder preparer ------------------------------------------------------
def _find_source(base: Path, name: str, extensions: tuple[str, ...]) -> tuple[Path, str] | None:
    """``base/name.<ext>`` (a video) or ``base/name/`` (a frame folder)."""
    folder = base / name
    if folder.is_dir():
        return folder, "frames"
    for extension in extensions:
        for candidate in (base / f"{name}{extension}", base / f"{name}{extension.upper()}"):
            if candidate.is_file():
                return candidate, "video"
    return None


def _class_order(names: set[str]) -> list[str]:
    """Sorted class names; numerically when all are integers (so "10" follows "9")."""
    if names and all(name.isdigit() for name in names):
        return sorted(names, key=int)
    return sorted(names)


def _scan_class_folders(root: Path, extensions: tuple[str, ...]) -> list[tuple[str, list[str], Path, str]]:
    items: list[tuple[str, list[str], Path, str]] = []
    seen: dict[str, Path] = {}
    for class_dir in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        for entry in sorted(class_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                video_id, kind = entry.name, "frames"
            elif entry.suffix.lower() in extensions:
                video_id, kind = entry.stem, "video"
            else:
                continue
            if video_id in seen:
                raise UsageError(f"{entry}: video id {video_id!r} also used by {seen[video_id]} (ids must be unique)")
            seen[video_id] = entry
            items.append((video_id, [class_dir.name], entry, kind))
    return items


def _read_labels_csv(path: Path) -> list[tuple[str, list[str]]]:
    """Rows ``id,label`` or ``id,label1;label2``; an optional ``id,label(s)`` header."""
    if not path.is_file():
        raise UsageError(f"{path}: labels CSV not found")
    rows: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: tolerate a spreadsheet's BOM
        reader = csv.reader(handle)
        for row in reader:
            number = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if number == 1 and row[0].strip().lower() == "id":
                continue
            if len(row) != 2:
                raise UsageError(
                    f"{path}:{number}: expected 2 fields `id,label` (or `id,label1;label2`), got {len(row)}"
                )
            video_id = row[0].strip()
            labels = [label.strip() for label in row[1].split(";") if label.strip()]
            if not video_id:
                raise UsageError(f"{path}:{number}: empty video id")
            if not labels:
                raise UsageError(f"{path}:{number}: video {video_id!r} has no label")
            if video_id in seen:
                raise UsageError(f"{path}:{number}: video {video_id!r} listed twice")
            seen.add(video_id)
            rows.append((video_id, labels))
    return rows


def stratified_split(keys: dict[str, str], val_fraction: float, test_fraction: float, seed: int) -> dict[str, str]:
    """``{video: split}``: per stratum, shuffle the sorted ids by ``seed`` and cut test, val, train."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise UsageError(f"split fractions val={val_fraction}, test={test_fraction}: each in [0, 1), sum below 1")
    strata: dict[str, list[str]] = defaultdict(list)
    for video, key in keys.items():
        strata[key].append(video)
    splits: dict[str, str] = {}
    for key in sorted(strata):
        videos = sorted(strata[key])
        random.Random(f"{seed}:{key}").shuffle(videos)
        n_test = round(len(videos) * test_fraction)
        n_val = round(len(videos) * val_fraction)
        for position, video in enumerate(videos):
            splits[video] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    return splits


def prepare_folder(
    root: Path | str,
    out: Path | str,
    labels: Path | str | None = None,
    extensions: tuple[str, ...] | list[str] = VIDEO_EXTENSIONS,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
    frame_pattern: str | None = None,
) -> Manifest:
    """Manifest of a folder of videos (class subfolders, or flat with a labels CSV).

    ``frame_pattern`` (e.g. ``RGB_%d.png``) names the frames inside each frame
    folder, for folders that also hold other images; without it every image is a
    frame and a folder mixing numbered series is refused.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise UsageError(f"{root}: dataset folder not found")
    extensions = tuple(ext.lower() if ext.startswith(".") else f".{ext.lower()}" for ext in extensions)
    log = SkipLog(strict)
    if labels is None:
        items = _scan_class_folders(root, extensions)
        class_names = {name for _, names, _, _ in items for name in names}
        multilabel = False
        layout = "class-per-subfolder"
    else:
        items = []
        rows = _read_labels_csv(Path(labels))
        # classes from the CSV, not from the files found: indices never depend on which videos exist
        class_names = {name for _, names in rows for name in names}
        multilabel = any(len(names) > 1 for _, names in rows)
        for video_id, names in rows:
            found = _find_source(root, video_id, extensions)
            if found is None:
                log.missing(video_id, root / f"{video_id}.*")
                continue
            items.append((video_id, names, *found))
        layout = f"flat folder with labels {stored_path(labels, out)}"
    classes = _class_order(class_names)
    index = {name: position for position, name in enumerate(classes)}
    splits = stratified_split(
        {video_id: ";".join(sorted(names)) for video_id, names, _, _ in items}, val_fraction, test_fraction, seed
    )
    if frame_pattern is not None and (not PATTERN_FIELD.search(frame_pattern) or "/" in frame_pattern):
        raise UsageError(
            f"--frame-pattern {frame_pattern!r}: expected a file name with one number field, e.g. RGB_%d.png"
        )
    videos = []
    for video_id, names, source, kind in items:
        if kind == "frames" and frame_pattern is not None:
            source = source / frame_pattern
        num_frames = count_images(source, " (give prepare folder --frame-pattern)") if kind == "frames" else None
        if num_frames == 0:
            log.missing(video_id, source, "frame images")
            continue
        videos.append(
            VideoEntry(
                id=video_id,
                source=stored_path(source, out),
                labels=sorted(index[name] for name in names),
                split=splits[video_id],
                kind=kind,
                num_frames=num_frames,
            )
        )
    manifest = Manifest(
        dataset="folder",
        classes=classes,
        multilabel=multilabel,
        videos=videos,
        extra={
            "layout": layout,
            "frame_pattern": frame_pattern,
            "split": {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed},
        },
    )
    return write_prepared(manifest, out, log, where=root)
