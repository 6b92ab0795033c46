"""The manifest: the one table of videos every stage reads.

Stored as ``manifest.json``; sources and annotation paths are relative to the
manifest's directory unless absolute, so a prepared dataset can be moved.
See the "manifest.json" section of ``docs/datasets.md``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hoitool.errors import UsageError
from hoitool.io.atomic import write_json

SCHEMA = "hoitool.manifest/1"
SPLITS = ("train", "val", "test")


@dataclass
class VideoEntry:
    """One video: where it is, what it shows, which split it belongs to."""

    id: str
    source: str
    labels: list[int]
    split: str
    kind: str = "video"  # "video" (a file PyAV can decode) or "frames" (a folder of JPEG/PNG, or a pattern such as <dir>/RGB_%d.png)
    group: str | None = None  # e.g. the subject, for cross-validation folds
    fps: float | None = None
    num_frames: int | None = None
    annotations: str | None = None  # boxes JSON-lines file (docs/boxes-jsonl.md), if the dataset has boxes
    objects: list[str] = field(default_factory=list)  # names of the objects the annotation says the video shows
    extra: dict = field(default_factory=dict)


@dataclass
class Manifest:
    dataset: str
    classes: list[str]
    multilabel: bool
    videos: list[VideoEntry]
    object_classes: list[str] = field(default_factory=list)
    root: Path = field(default=Path("."), repr=False)
    extra: dict = field(default_factory=dict)

    # -- lookup ---------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def by_id(self) -> dict[str, VideoEntry]:
        return {video.id: video for video in self.videos}

    def sorted_videos(self) -> list[VideoEntry]:
        """Videos in the canonical order (by id) that sharding and stores use."""
        return sorted(self.videos, key=lambda video: video.id)

    def split(self, name: str) -> list[VideoEntry]:
        return [video for video in self.sorted_videos() if video.split == name]

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else self.root / path

    def source_path(self, video: VideoEntry) -> Path:
        return self.resolve(video.source)

    # -- persistence ----------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "dataset": self.dataset,
            "classes": self.classes,
            "object_classes": self.object_classes,
            "multilabel": self.multilabel,
            "extra": self.extra,
            "videos": [asdict(video) for video in self.sorted_videos()],
        }

    def save(self, path: Path | str) -> None:
        self.validate()
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        if not path.exists():
            raise UsageError(f"{path}: manifest not found (run `hoitool prepare` first)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"{path}: not a valid manifest JSON file ({exc})") from None
        if data.get("schema") != SCHEMA:
            raise UsageError(f"{path}: unknown manifest schema {data.get('schema')!r} (expected {SCHEMA!r})")
        try:
            videos = [VideoEntry(**video) for video in data["videos"]]
            manifest = cls(
                dataset=data["dataset"],
                classes=list(data["classes"]),
                multilabel=bool(data["multilabel"]),
                videos=videos,
                object_classes=list(data.get("object_classes", [])),
                root=path.parent.resolve(),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError) as exc:
            raise UsageError(f"{path}: malformed manifest ({exc})") from None
        manifest.validate(where=str(path))
        return manifest

    def validate(self, where: str = "manifest") -> None:
        seen: set[str] = set()
        for video in self.videos:
            if video.id in seen:
                raise UsageError(f"{where}: duplicate video id {video.id!r}")
            seen.add(video.id)
            if video.split not in SPLITS:
                raise UsageError(f"{where}: video {video.id!r} has split {video.split!r}, expected one of {SPLITS}")
            if video.kind not in ("video", "frames"):
                raise UsageError(f"{where}: video {video.id!r} has kind {video.kind!r}, expected 'video' or 'frames'")
            if not isinstance(video.objects, list) or not all(isinstance(name, str) and name for name in video.objects):
                raise UsageError(f"{where}: video {video.id!r} has objects {video.objects!r}, expected a list of names")
            bad = [label for label in video.labels if not 0 <= label < len(self.classes)]
            if bad:
                raise UsageError(f"{where}: video {video.id!r} has labels {bad} outside 0..{len(self.classes) - 1}")
            if not self.multilabel and len(video.labels) != 1:
                raise UsageError(f"{where}: single-label dataset but video {video.id!r} has {len(video.labels)} labels")


def select_shard(videos: list[VideoEntry], shard: tuple[int, int] | None) -> list[VideoEntry]:
    """Deterministic strided slice ``i/n`` of the id-sorted videos (SLURM array friendly)."""
    ordered = sorted(videos, key=lambda video: video.id)
    if shard is None:
        return ordered
    index, count = shard
    return ordered[index::count]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"i/n"`` (0 <= i < n)."""
    if text is None:
        return None
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise UsageError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text!r}: need 0 <= i < n")
    return index, count
