"""``hoitool prepare <dataset> OUT``: a dataset's raw layout -> ``OUT/manifest.json`` (docs/datasets.md).

Every command resolves its config (defaults < --config < options < --set),
saves it as ``OUT/config.resolved.yaml`` and refuses to overwrite a manifest
prepared with another config unless ``--force``; the same config again is a no-op.

OUT must be new, empty, or a folder hoitool prepared (its ``.hoitool-dataset.json``
marker, written first); ``--force`` replaces only hoitool's own files in it
(:data:`OWNED_FILES`), and a folder of anyone else's files is refused untouched.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.table import Table

from hoitool.cli import console
from hoitool.cli.app import prepare_app
from hoitool.cli.options import ConfigOption, ForceOption, PrintConfigOption, SetOption, stage_config
from hoitool.config import changed_keys, save_config
from hoitool.datasets.cad120 import Intrinsics, prepare_cad120
from hoitool.datasets.charades import prepare_charades
from hoitool.datasets.folder import (
    ANNOTATIONS_FILE,
    DATASET_FORMAT,
    DATASET_MARKER,
    MANIFEST_FILE,
    WARNINGS_FILE,
    prepare_folder,
)
from hoitool.datasets.ssv2 import prepare_ssv2
from hoitool.errors import UsageError
from hoitool.io.atomic import write_json
from hoitool.manifest import SPLITS, Manifest
from hoitool.settings.prepare import PREPARE_SETTINGS

CONFIG_FILE = "config.resolved.yaml"
# What --force replaces (the manifest first, so an interrupted redo leaves no stale one); the synthetic
# videos are rewritten in place by the generator. Nothing else in OUT is ever deleted.
OWNED_FILES = (MANIFEST_FILE, ANNOTATIONS_FILE, WARNINGS_FILE, CONFIG_FILE)


OutArgument = typer.Argument(
    ..., help="Output folder for manifest.json (and annotations.jsonl where the dataset has boxes)."
)
RootOption = typer.Option(None, "--root", help="The dataset's raw folder, in its official layout.")
StrictOption = typer.Option(None, "--strict/--no-strict", help="Fail on a missing video instead of skipping it.")
SeedOption = typer.Option(None, "--seed", help="Seed of the deterministic split.")


def _absolute(path: Optional[Path]) -> Optional[str]:
    return None if path is None else str(path.absolute())


def _value(config: dict, key: str, kind: type):
    """A config value of the expected type, or a one-line error naming the key."""
    value = config[key]
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"config key {key!r}: expected {kind.__name__}, got {value!r}") from None


def _flag(config: dict, key: str) -> bool:
    value = config[key]
    if not isinstance(value, bool):
        raise UsageError(f"config key {key!r}: expected true or false, got {value!r}")
    return value


def _subject_or_fraction(text: Optional[str]) -> str | float | None:
    """``--val 0.2`` is a fraction, ``--val Subject3`` a subject."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _root(config: dict) -> Path:
    if not config.get("root"):
        raise UsageError("--root: the dataset's raw folder is required (or set `root` in --config)")
    root = Path(config["root"])
    if not root.is_dir():
        raise UsageError(f"{root}: dataset root folder not found")
    return root


def _previous(out: Path) -> tuple[str | None, dict | None]:
    """Dataset name and config of an earlier preparation in ``out`` (None where unreadable)."""
    try:
        dataset = json.loads((out / MANIFEST_FILE).read_text(encoding="utf-8")).get("dataset")
    except (OSError, ValueError, AttributeError):
        dataset = None
    try:
        config = yaml.safe_load((out / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        config = None
    return dataset, config if isinstance(config, dict) else None


def frames_per_video(manifest: Manifest) -> str:
    """min / median / max of the counted frames, so a doubled count (depth images read as frames) shows."""
    from statistics import median

    counts = sorted(video.num_frames for video in manifest.videos if video.num_frames is not None)
    if not counts:
        return "not counted (video files: decoded at extraction)"
    uncounted = len(manifest.videos) - len(counts)
    return f"{counts[0]} / {median(counts):g} / {counts[-1]} (min / median / max)" + (
        f", {uncounted} not counted" if uncounted else ""
    )


def _is_ours(out: Path) -> bool:
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
    if _is_ours(out):
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
    if not _is_ours(out):
        write_json(out / DATASET_MARKER, {"format": DATASET_FORMAT, "dataset": dataset})


def _delete_owned(out: Path) -> None:
    for name in OWNED_FILES:
        for path in [out / name, *out.glob(f".{name}.*.tmp")]:
            if path.is_file():
                path.unlink()


def summary_table(manifest: Manifest, out: Path) -> Table:
    counts = Counter(video.split for video in manifest.videos)
    has_boxes = any(video.annotations for video in manifest.videos)
    skipped = int(manifest.extra.get("skipped_videos", 0))
    table = Table(title=f"{manifest.dataset} -> {out / MANIFEST_FILE}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for split in SPLITS:
        table.add_row(f"{split} videos", str(counts.get(split, 0)))
    table.add_row("classes", f"{manifest.num_classes} ({'multi' if manifest.multilabel else 'single'}-label)")
    table.add_row("frames per video", frames_per_video(manifest))
    table.add_row("boxes", f"yes ({ANNOTATIONS_FILE})" if has_boxes else "no")
    table.add_row("skipped", f"{skipped} (see {WARNINGS_FILE})" if skipped else "0")
    return table


def run_prepare(dataset: str, out: Path, config: dict, force: bool, build: Callable[[Path], Manifest]) -> Manifest:
    """Prepare ``out`` unless it already holds this exact preparation; never overwrite another silently.

    ``build`` gets only validated arguments, so a config mistake fails before OUT is touched.
    """
    manifest_path = out / MANIFEST_FILE
    old_dataset, old_config = _previous(out) if manifest_path.is_file() else (None, None)
    if old_dataset == dataset and old_config == config and not force:  # read-only, so fine in any folder
        console.info(f"{out}: already prepared with this config, nothing to do (--force redoes it)")
        manifest = Manifest.load(manifest_path)
        console.stdout.print(summary_table(manifest, out))
        return manifest
    if _check_out(out) and manifest_path.exists():
        if not force:
            if old_dataset != dataset:
                what = f"dataset {old_dataset!r}, not {dataset!r}"
            elif old_config is None:
                what = f"an unknown config ({CONFIG_FILE} missing)"
            else:
                what = f"a different config ({', '.join(changed_keys(old_config, config))} changed)"
            raise UsageError(
                f"{manifest_path}: already prepared from {what}; use --force to overwrite or pick another OUT"
            )
        _delete_owned(out)  # from here on an interrupted run leaves no stale manifest behind
    _claim(out, dataset)
    save_config(config, out, CONFIG_FILE)
    manifest = build(out)
    console.stdout.print(summary_table(manifest, out))
    skipped = int(manifest.extra.get("skipped_videos", 0))
    if skipped:
        console.info(f"[yellow]warning:[/yellow] {skipped} video(s) skipped, listed in {out / WARNINGS_FILE}")
    return manifest


@prepare_app.command("synthetic")
def synthetic(
    out: Path = OutArgument,
    videos_per_class: Optional[int] = typer.Option(None, "--videos-per-class", help="Videos per class [12]."),
    frames: Optional[int] = typer.Option(None, "--frames", help="Frames per video [24]."),
    size: Optional[int] = typer.Option(None, "--size", help="Frame width and height in pixels [128]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed [0]."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate written into the videos [8]."),
    force: bool = ForceOption,
    config_file: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Generate a small synthetic HOI video set with ground-truth boxes (needs no download)."""
    config = stage_config(
        PREPARE_SETTINGS["synthetic"],
        config_file,
        overrides,
        print_config,
        {
            "videos_per_class": videos_per_class,
            "frames": frames,
            "size": size,
            "seed": seed,
            "fps": fps,
        },
    )
    arguments = {
        "videos_per_class": _value(config, "videos_per_class", int),
        "num_frames": _value(config, "frames", int),
        "size": _value(config, "size", int),
        "seed": _value(config, "seed", int),
        "fps": _value(config, "fps", float),
    }

    def build(out: Path) -> Manifest:
        from hoitool.datasets.synthetic import generate  # written by its own module; imported only when used

        return generate(out, **arguments)

    run_prepare("synthetic", out, config, force, build)


@prepare_app.command("charades")
def charades(
    out: Path = OutArgument,
    root: Optional[Path] = RootOption,
    frames: Optional[bool] = typer.Option(
        None, "--frames/--videos", help="Use Charades_v1_rgb frame folders instead of the mp4 videos."
    ),
    video_dir: Optional[str] = typer.Option(None, "--video-dir", help="Videos folder under ROOT [Charades_v1_480]."),
    frames_dir: Optional[str] = typer.Option(None, "--frames-dir", help="Frames folder under ROOT [Charades_v1_rgb]."),
    val_fraction: Optional[float] = typer.Option(
        None,
        "--val-fraction",
        help="About this share of the training videos held out as val, whole subjects at a time [0.1].",
    ),
    seed: Optional[int] = SeedOption,
    strict: Optional[bool] = StrictOption,
    force: bool = ForceOption,
    config_file: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Charades v1 (multi-label): train CSV -> train + val (held out by subject), test CSV -> test."""
    config = stage_config(
        PREPARE_SETTINGS["charades"],
        config_file,
        overrides,
        print_config,
        {
            "root": _absolute(root),
            "frames": frames,
            "video_dir": video_dir,
            "frames_dir": frames_dir,
            "val_fraction": val_fraction,
            "seed": seed,
            "strict": strict,
        },
    )
    raw = _root(config)
    arguments = {
        "frames": _flag(config, "frames"),
        "val_fraction": _value(config, "val_fraction", float),
        "seed": _value(config, "seed", int),
        "video_dir": str(config["video_dir"]),
        "frames_dir": str(config["frames_dir"]),
        "strict": _flag(config, "strict"),
    }
    run_prepare("charades", out, config, force, lambda out: prepare_charades(raw, out, **arguments))


@prepare_app.command("cad120")
def cad120(
    out: Path = OutArgument,
    root: Optional[Path] = RootOption,
    fold: Optional[str] = typer.Option(
        None, "--fold", help="Test subject of this leave-one-subject-out fold, e.g. Subject1."
    ),
    val: Optional[str] = typer.Option(
        None, "--val", help="Validation: a training subject (e.g. Subject3) or a fraction of the training videos [0.2]."
    ),
    seed: Optional[int] = SeedOption,
    strict: Optional[bool] = StrictOption,
    force: bool = ForceOption,
    config_file: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """CAD-120: frames, activity labels, object and person boxes, sub-activity segments."""
    config = stage_config(
        PREPARE_SETTINGS["cad120"],
        config_file,
        overrides,
        print_config,
        {
            "root": _absolute(root),
            "fold": fold,
            "val": _subject_or_fraction(val),
            "seed": seed,
            "strict": strict,
        },
    )
    raw = _root(config)
    intrinsics = config["intrinsics"]
    try:
        camera = Intrinsics(**{key: float(intrinsics[key]) for key in ("fx", "fy", "cx", "cy")})
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"config key 'intrinsics': expected numbers fx, fy, cx, cy, got {intrinsics!r}") from None
    arguments = {
        "fold": None if config["fold"] is None else str(config["fold"]),
        "val": config["val"] if isinstance(config["val"], str) else _value(config, "val", float),
        "seed": _value(config, "seed", int),
        "strict": _flag(config, "strict"),
        "intrinsics": camera,
        "person_margin": _value(config, "person_margin", float),
    }
    run_prepare("cad120", out, config, force, lambda out: prepare_cad120(raw, out, **arguments))


@prepare_app.command("ssv2")
def ssv2(
    out: Path = OutArgument,
    root: Optional[Path] = RootOption,
    video_dir: Optional[str] = typer.Option(
        None, "--video-dir", help="Folder of the <id>.webm videos, relative to ROOT [.]."
    ),
    boxes: list[Path] = typer.Option(
        [], "--boxes", help="Something-Else box annotation file (repeat for each part): the dataset's own boxes."
    ),
    strict: Optional[bool] = StrictOption,
    force: bool = ForceOption,
    config_file: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Something-Something v2: train -> train, validation -> val; the unlabelled test list is left out."""
    config = stage_config(
        PREPARE_SETTINGS["ssv2"],
        config_file,
        overrides,
        print_config,
        {
            "root": _absolute(root),
            "video_dir": video_dir,
            "strict": strict,
            "boxes": [_absolute(path) for path in boxes] or None,
        },
    )
    raw = _root(config)
    box_files = config["boxes"]
    if not isinstance(box_files, list):
        raise UsageError(f"config key 'boxes': expected a list of Something-Else annotation files, got {box_files!r}")
    arguments = {
        "video_dir": str(config["video_dir"]),
        "strict": _flag(config, "strict"),
        "boxes": [str(path) for path in box_files],
    }
    run_prepare("ssv2", out, config, force, lambda out: prepare_ssv2(raw, out, **arguments))


@prepare_app.command("folder")
def folder(
    out: Path = OutArgument,
    root: Optional[Path] = RootOption,
    labels: Optional[Path] = typer.Option(
        None, "--labels", help="CSV `id,label` or `id,label1;label2` for a flat folder (else: one subfolder per class)."
    ),
    val_fraction: Optional[float] = typer.Option(
        None, "--val-fraction", help="Share of each class held out as val [0.1]."
    ),
    test_fraction: Optional[float] = typer.Option(
        None, "--test-fraction", help="Share of each class held out as test [0.1]."
    ),
    frame_pattern: Optional[str] = typer.Option(
        None,
        "--frame-pattern",
        help="Frame file names inside each frame folder, e.g. RGB_%d.png (for folders that hold other images too).",
    ),
    seed: Optional[int] = SeedOption,
    strict: Optional[bool] = StrictOption,
    force: bool = ForceOption,
    config_file: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """A folder of videos or frame folders: ROOT/<class>/<video>, or flat with --labels; stratified split."""
    config = stage_config(
        PREPARE_SETTINGS["folder"],
        config_file,
        overrides,
        print_config,
        {
            "root": _absolute(root),
            "labels": _absolute(labels),
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "seed": seed,
            "strict": strict,
            "frame_pattern": frame_pattern,
        },
    )
    raw = _root(config)
    extensions = config["extensions"]
    if not isinstance(extensions, list) or not extensions:
        raise UsageError(f"config key 'extensions': expected a list such as [mp4, avi], got {extensions!r}")
    arguments = {
        "labels": config["labels"],
        "extensions": [str(ext) for ext in extensions],
        "val_fraction": _value(config, "val_fraction", float),
        "test_fraction": _value(config, "test_fraction", float),
        "seed": _value(config, "seed", int),
        "strict": _flag(config, "strict"),
        "frame_pattern": None if config["frame_pattern"] is None else str(config["frame_pattern"]),
    }
    run_prepare("folder", out, config, force, lambda out: prepare_folder(raw, out, **arguments))
