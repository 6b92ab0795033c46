"""What every dataset preparer shares: the prepared folder's files, the helpers that write them, and the policy.

A prepared dataset is a folder ``OUT`` holding hoitool's marker (:data:`DATASET_MARKER`, written first),
``config.resolved.yaml``, ``prepare_warnings.jsonl`` (videos left out), ``annotations.jsonl`` (the dataset's
own boxes, where it has some) and ``manifest.json`` (written last: its presence means done).

:func:`prepare_dataset` is the one way into such a folder (docs/datasets.md): the same config again is a
no-op, a different config (or dataset) is refused unless ``force`` (the decision of :mod:`hoitool.resume`),
``force`` replaces only hoitool's own files (:data:`OWNED_FILES`), and a folder of anyone else's files is
refused untouched.
"""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import BaseModel

from hoitool import log, resume
from hoitool.boxes.jsonl import FrameBoxes, write_boxes_jsonl
from hoitool.config import save_config
from hoitool.errors import UsageError
from hoitool.io.atomic import atomic_path, write_json, write_text
from hoitool.manifest import Manifest
from hoitool.resume import Decision, Place, Record, Request, would_skip
from hoitool.settings.base import resolved
from hoitool.video.reader import MixedFramesError, VideoReadError, list_frame_files

MANIFEST_FILE = "manifest.json"
ANNOTATIONS_FILE = "annotations.jsonl"
WARNINGS_FILE = "prepare_warnings.jsonl"
CONFIG_FILE = "config.resolved.yaml"
DATASET_MARKER = ".hoitool-dataset.json"  # written first: this folder is hoitool's prepared dataset
DATASET_FORMAT = "hoitool.dataset/1"
# What force replaces (the manifest first, so an interrupted redo leaves no stale one); the synthetic
# videos are rewritten in place by the generator. Nothing else in OUT is ever deleted.
OWNED_FILES = (MANIFEST_FILE, ANNOTATIONS_FILE, WARNINGS_FILE, CONFIG_FILE)


# -- helpers of the preparers -------------------------------------------------
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


def require_root(root: str | None) -> Path:
    """The raw folder a preparer reads, checked before OUT is touched."""
    if not root:
        raise UsageError("--root: the dataset's raw folder is required (or set `root` in --config)")
    path = Path(root)
    if not path.is_dir():
        raise UsageError(f"{path}: dataset root folder not found")
    return path


# -- who may write into OUT, and when (the decision is hoitool.resume's) -----
def _place(out: Path) -> Place:
    """A prepared folder as :mod:`hoitool.resume` words its refusals."""
    return Place(
        out / MANIFEST_FILE,
        "prepared dataset",
        remedy="use --force to overwrite or pick another OUT",
        verb="overwrite",
        kind="dataset",
    )


def _previous(out: Path) -> Record | None:
    """What an earlier preparation left in ``out`` (dataset and config, None where unreadable); None without a manifest."""
    if not (out / MANIFEST_FILE).is_file():
        return None
    try:
        dataset = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8")).get("dataset")
    except (OSError, ValueError, AttributeError):
        dataset = None
    try:
        config = yaml.safe_load((out / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        config = None
    return Record(
        config if isinstance(config, dict) else None, kind=dataset, missing=f"{CONFIG_FILE} missing", finished=True
    )


def is_prepared_dataset(out: Path) -> bool:
    """Whether ``out`` carries hoitool's dataset marker."""
    try:
        marker = json.loads((out / DATASET_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == DATASET_FORMAT


def _check_out(out: Path) -> bool:
    """True when OUT is hoitool's prepared dataset, False when new or empty; anything else is refused untouched."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise UsageError(f"{out}: is a file, not a folder; choose another OUT")
    if is_prepared_dataset(out):
        return True
    if not any(out.iterdir()):
        return False
    what = (
        "holds a manifest.json but no hoitool marker (prepared by an older hoitool, or by hand)"
        if (out / MANIFEST_FILE).exists()
        else "is not empty and was not prepared by hoitool"
    )
    raise UsageError(
        f"{out}: {what} ({DATASET_MARKER} missing); refusing to write into it or delete anything "
        "(choose a new or empty OUT)"
    )


def _claim(out: Path, dataset: str) -> None:
    """Create OUT and write hoitool's marker first, before any other file."""
    out.mkdir(parents=True, exist_ok=True)
    if not is_prepared_dataset(out):
        write_json(out / DATASET_MARKER, {"format": DATASET_FORMAT, "dataset": dataset})


def _delete_owned(out: Path) -> None:
    for name in OWNED_FILES:
        for path in [out / name, *out.glob(f".{name}.*.tmp")]:
            if path.is_file():
                path.unlink()


def run_prepare(dataset: str, out: Path, config: dict, force: bool, build: Callable[[Path], Manifest]) -> Manifest:
    """Prepare ``out`` with ``build`` unless it already holds this exact preparation; never overwrite another silently.

    ``config`` is the resolved config (saved as ``OUT/config.resolved.yaml``, compared on the next run);
    ``build`` must need nothing more than validated values, so a config mistake fails before OUT is touched.
    """
    out = Path(out)
    manifest_path = out / MANIFEST_FILE
    place, recorded, asked = _place(out), _previous(out), Request(config, kind=dataset, force=force)
    if would_skip(place, recorded, asked):  # read-only, so fine in any folder
        log.info(f"{out}: already prepared with this config, nothing to do (--force redoes it)")
        return Manifest.load(manifest_path)
    if _check_out(out) and recorded is not None:
        if resume.decide(place, recorded, asked) is Decision.REPLACE:  # refuses another config unless force
            _delete_owned(out)  # from here on an interrupted run leaves no stale manifest behind
    _claim(out, dataset)
    save_config(config, out, CONFIG_FILE)
    manifest = build(out)
    skipped = int(manifest.extra.get("skipped_videos", 0))
    if skipped:
        log.warning(f"{skipped} video(s) skipped, listed in {out / WARNINGS_FILE}")
    return manifest


def prepare_dataset(
    name: str, out: Path | str, config: dict | BaseModel | None = None, force: bool = False
) -> Manifest:
    """Prepare dataset ``name`` (a registered preparer) into ``out`` and return its manifest.

    Args:
        name: a name of :func:`hoitool.datasets.registry.list_preparers`, e.g. ``"charades"``.
        out: the prepared folder: new, empty, or one hoitool prepared.
        config: the preparer's settings (an instance, or a full or partial dict; missing keys take
            their defaults), validated before anything is written.
        force: redo a preparation made with another config (replacing only hoitool's own files).

    Returns:
        The :class:`~hoitool.manifest.Manifest` written to ``out/manifest.json`` (or found there
        when ``out`` already holds this exact preparation).
    """
    from hoitool.datasets.registry import get_preparer  # the registry imports the dataset modules, which import us

    preparer = get_preparer(name)
    values = resolved(preparer.settings, config or {})
    settings = preparer.settings.model_validate(values)
    preparer.check(settings)
    return run_prepare(preparer.name, Path(out), values, force, lambda out: preparer.build(settings, out))
