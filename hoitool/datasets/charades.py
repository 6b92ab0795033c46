"""Prepare Charades v1 from its official release (docs/datasets.md#charades).

Reads ``Charades_v1_{train,test}.csv`` and ``Charades_v1_classes.txt``; a video's
labels are the set of classes in its ``actions`` (multi-label, possibly empty).
The official test CSV becomes "test"; the train CSV becomes "train" plus a
"val" split held out *by subject*, so no validation subject is seen in training.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hoitool.datasets.common import SkipLog, count_images, hold_out_groups, stored_path, write_prepared
from hoitool.datasets.registry import register_preparer
from hoitool.errors import UsageError
from hoitool.manifest import Manifest, VideoEntry
from hoitool.settings.prepare import CharadesSettings

CLASSES_FILE = "Charades_v1_classes.txt"
TRAIN_CSV = "Charades_v1_train.csv"
TEST_CSV = "Charades_v1_test.csv"
FRAMES_FPS = 24.0  # Charades_v1_rgb: frame k <-> time (k - 1) / 24
REQUIRED_COLUMNS = ("id", "subject", "actions", "length")


@dataclass
class CharadesRow:
    id: str
    subject: str
    labels: list[int]
    length: float | None
    objects: list[str]  # the ``objects`` column: names joined by ";" (may be empty or absent)
    actions: list[list[float]]  # [class, start, end] in seconds, as listed (clip labels, data.labels=clip)


def read_classes(path: Path) -> list[str]:
    """``cNNN description`` per line, in index order."""
    if not path.is_file():
        raise UsageError(f"{path}: Charades class list not found")
    classes: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        code, _, description = line.strip().partition(" ")
        if code != f"c{len(classes):03d}":
            raise UsageError(f"{path}:{number}: expected class code c{len(classes):03d}, got {code!r}")
        classes.append(description.strip())
    if not classes:
        raise UsageError(f"{path}: no classes")
    return classes


def parse_actions(text: str, num_classes: int, where: str) -> list[int]:
    """``"c092 11.90 21.20;c147 0.00 12.60"`` -> sorted distinct class indices."""
    labels: set[int] = set()
    for action in filter(None, (part.strip() for part in text.split(";"))):
        fields = action.split()
        if len(fields) != 3 or not fields[0].startswith("c"):
            raise UsageError(f"{where}: bad action {action!r} (expected `cNNN START END`)")
        try:
            index = int(fields[0][1:])
            float(fields[1]), float(fields[2])
        except ValueError:
            raise UsageError(f"{where}: bad action {action!r} (expected `cNNN START END`)") from None
        if not 0 <= index < num_classes:
            raise UsageError(f"{where}: action class {fields[0]} outside c000..c{num_classes - 1:03d}")
        labels.add(index)
    return sorted(labels)


def action_intervals(text: str) -> list[list[float]]:
    """``"c092 11.90 21.20;c147 0.00 12.60"`` -> ``[[92, 11.9, 21.2], [147, 0.0, 12.6]]`` (checked by parse_actions)."""
    fields = (action.split() for action in text.split(";") if action.strip())
    return [[int(code[1:]), float(start), float(end)] for code, start, end in fields]


def read_csv(path: Path, num_classes: int) -> list[CharadesRow]:
    if not path.is_file():
        raise UsageError(f"{path}: Charades annotation CSV not found")
    rows: list[CharadesRow] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [column for column in REQUIRED_COLUMNS if column not in header]
        if missing:
            raise UsageError(f"{path}:1: header lacks column(s) {', '.join(missing)}")
        for record in reader:
            where = f"{path}:{reader.line_num}"
            if None in record or any(record[column] is None for column in REQUIRED_COLUMNS):
                raise UsageError(f"{where}: expected {len(header)} fields as in the header")
            video_id = record["id"].strip()
            if not video_id:
                raise UsageError(f"{where}: empty video id")
            length_text = record["length"].strip()
            try:
                length = float(length_text) if length_text else None
            except ValueError:
                raise UsageError(f"{where}: bad length {length_text!r}") from None
            labels = parse_actions(record["actions"], num_classes, where)
            objects = [name.strip() for name in (record.get("objects") or "").split(";") if name.strip()]
            actions = action_intervals(record["actions"])
            rows.append(CharadesRow(video_id, record["subject"].strip(), labels, length, objects, actions))
    return rows


def prepare_charades(
    root: Path | str,
    out: Path | str,
    from_frames: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    video_dir: str = "Charades_v1_480",
    frames_dir: str = "Charades_v1_rgb",
    strict: bool = False,
) -> Manifest:
    """Manifest of Charades v1: videos (``<video_dir>/<id>.mp4``) or frames (``<frames_dir>/<id>/``)."""
    root, out = Path(root), Path(out)
    classes = read_classes(root / CLASSES_FILE)
    train_rows = read_csv(root / TRAIN_CSV, len(classes))
    test_rows = read_csv(root / TEST_CSV, len(classes))
    val_subjects = hold_out_groups(Counter(row.subject for row in train_rows), val_fraction, seed)

    log = SkipLog(strict)
    videos: list[VideoEntry] = []
    seen: dict[str, str] = {}
    for csv_name, rows in ((TRAIN_CSV, train_rows), (TEST_CSV, test_rows)):
        for row in rows:
            if row.id in seen:
                raise UsageError(f"{root / csv_name}: video {row.id!r} already listed in {seen[row.id]}")
            seen[row.id] = csv_name
            if from_frames:  # Charades_v1_rgb/<id>/<id>-000001.jpg: named by a pattern, so no other image is a frame
                source = root / frames_dir / row.id / f"{row.id}-%06d.jpg"
                if not (source.parent / f"{row.id}-000001.jpg").is_file():
                    log.missing(row.id, source.parent / f"{row.id}-000001.jpg", "frames")
                    continue
            else:
                source = root / video_dir / f"{row.id}.mp4"
                if not source.is_file():
                    log.missing(row.id, source)
                    continue
            split = "test" if csv_name == TEST_CSV else "val" if row.subject in val_subjects else "train"
            videos.append(
                VideoEntry(
                    id=row.id,
                    source=stored_path(source, out),
                    labels=row.labels,
                    split=split,
                    kind="frames" if from_frames else "video",
                    group=row.subject,
                    fps=FRAMES_FPS if from_frames else None,
                    num_frames=count_images(source) if from_frames else None,
                    objects=row.objects,
                    extra={"length": row.length, "actions": row.actions},
                )
            )
    manifest = Manifest(
        dataset="charades",
        classes=classes,
        multilabel=True,
        videos=videos,
        extra={
            "split": {"val_fraction": val_fraction, "seed": seed, "val_subjects": sorted(val_subjects)},
            # the official lists eval ranks a run against (every listed video, missing ones last)
            "ground_truth": {"test": stored_path(root / TEST_CSV, out), "train": stored_path(root / TRAIN_CSV, out)},
        },
    )
    return write_prepared(manifest, out, log, where=root)


@register_preparer("charades", CharadesSettings)
def build(config: CharadesSettings, out: Path) -> Manifest:
    """Charades v1 (multi-label): train CSV -> train + val (held out by subject), test CSV -> test."""
    keywords = config.model_dump(exclude={"root"})  # the settings' keys are the function's keyword arguments
    return prepare_charades(Path(str(config.root)), out, **keywords)
