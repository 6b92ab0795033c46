"""Prepare a plain folder of videos: class sub-folders, or flat with a labels CSV.

Two layouts (docs/datasets.md):

* class per subfolder: ``root/<class>/<video>.mp4`` (or ``.avi .webm .mkv .mov``)
  or ``root/<class>/<video>/`` holding the frames as images;
* a flat folder ``root/<id>.mp4`` (or ``root/<id>/``) with a labels CSV whose
  rows are ``id,label`` or ``id,label1;label2`` (multi-label).

The split is stratified by class (by label set for multi-label data) and
depends only on the file names and the seed, never on the listing order.
"""

from __future__ import annotations

import csv
from pathlib import Path

from hoitool.datasets.common import SkipLog, count_images, stored_path, stratified_split, write_prepared
from hoitool.datasets.registry import register_preparer
from hoitool.errors import UsageError
from hoitool.manifest import Manifest, VideoEntry
from hoitool.settings.prepare import FolderSettings
from hoitool.video.reader import PATTERN_FIELD

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov")


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


@register_preparer("folder", FolderSettings)
def build(config: FolderSettings, out: Path) -> Manifest:
    """A folder of videos or frame folders: ROOT/<class>/<video>, or flat with --labels; stratified split."""
    keywords = config.model_dump(exclude={"root"})  # the settings' keys are the function's keyword arguments
    return prepare_folder(Path(str(config.root)), out, **keywords)
