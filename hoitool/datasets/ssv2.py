"""Prepare Something-Something v2 from its official annotation files (docs/datasets.md#something-something-v2).

``something-something-v2-{train,validation}.json`` give each video's template;
the template without its brackets is looked up in ``...-labels.json`` (174
classes). The official validation set becomes "val"; nothing else is held out.
The test JSON holds ids only: those videos have no label, the manifest is
single-label, so they are left out (their count is recorded) rather than given a
fake label.
"""

from __future__ import annotations

import json
from pathlib import Path

from hoitool.datasets.folder import SkipLog, stored_path, write_prepared
from hoitool.errors import UsageError
from hoitool.manifest import Manifest, VideoEntry

PREFIX = "something-something-v2"
LABELS_FILE = f"{PREFIX}-labels.json"
SPLIT_FILES = {"train": f"{PREFIX}-train.json", "val": f"{PREFIX}-validation.json"}
TEST_FILE = f"{PREFIX}-test.json"


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


def read_split(path: Path, class_index: dict[str, int]) -> list[tuple[str, int]]:
    """``[(id, class index)]`` of one labelled split file."""
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
            raise UsageError(f"{where} (id {video_id}): template {item['template']!r} is not a class of the labels file")
        result.append((video_id, class_index[name]))
    return result


def _count_test_videos(path: Path) -> int:
    """Size of the (unlabelled) test list, recorded so its omission is visible."""
    if not path.is_file():
        return 0
    data = _load_json(path)
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of videos")
    return len(data)


def prepare_ssv2(root: Path | str, out: Path | str, video_dir: str = ".", strict: bool = False) -> Manifest:
    """Manifest of Something-Something v2 (train and validation; videos ``<video_dir>/<id>.webm``)."""
    root, out = Path(root), Path(out)
    classes = read_labels(root / LABELS_FILE)
    class_index = {name: index for index, name in enumerate(classes)}
    log = SkipLog(strict)
    videos: list[VideoEntry] = []
    seen: set[str] = set()
    for split, file_name in SPLIT_FILES.items():
        for video_id, label in read_split(root / file_name, class_index):
            if video_id in seen:
                raise UsageError(f"{root / file_name}: video {video_id!r} listed twice")
            seen.add(video_id)
            source = root / video_dir / f"{video_id}.webm"
            if not source.is_file():
                log.missing(video_id, source)
                continue
            videos.append(VideoEntry(id=video_id, source=stored_path(source, out), labels=[label], split=split))
    omitted = _count_test_videos(root / TEST_FILE)
    manifest = Manifest(
        dataset="ssv2",
        classes=classes,
        multilabel=False,
        videos=videos,
        extra={
            "omitted_test_videos": omitted,
            "notes": [f"{TEST_FILE} has no labels: its videos are not in this manifest"] if omitted else [],
        },
    )
    return write_prepared(manifest, out, log, where=root)
