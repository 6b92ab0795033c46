"""The JSON-lines import of a vision-language teacher's captions and triplets (docs/vlm-import.md).

One line per video::

    {"video": "<manifest id>", "captions": ["A person is pouring water into a cup."],
     "triplets": [["pour", "water"], {"interaction": "hold", "object": "cup"}, "*Pour, Water."],
     "source": "InstructBLIP-7B, prompt v2"}

``caption`` (one string) may stand for ``captions``; at least one of them or ``triplets`` is needed.
A triplet is ``[interaction, object]``, ``{"interaction", "object"}`` (object may be null) or the
teacher's own text (``"*Swing, Baseball Bat."``, :func:`hoitool.text.triplets.parse_triplet_text`).
Blank lines are skipped; anything else that is wrong is a one-line error naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hoitool.errors import UsageError
from hoitool.io.atomic import atomic_path
from hoitool.text.triplets import caption_triplets, parse_triplet_text

KEYS = frozenset({"video", "caption", "captions", "triplets", "source"})

Triplet = tuple[str, "str | None"]


@dataclass
class VideoText:
    """What the teacher said about one video."""

    video: str
    captions: list[str] = field(default_factory=list)
    triplets: list[tuple[str, str | None]] = field(default_factory=list)
    source: str | None = None
    triplets_from: str = "import"  # "import" (the teacher's) or "rules" (caption_triplets)

    def interactions(self) -> list[str]:
        """The distinct interactions of the triplets, in order."""
        return list(dict.fromkeys(interaction for interaction, _ in self.triplets))

    def to_json(self) -> dict:
        record: dict = {"video": self.video}
        if self.captions:
            record["captions"] = self.captions
        record["triplets"] = [[interaction, obj] for interaction, obj in self.triplets]
        if self.source is not None:
            record["source"] = self.source
        return record


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _triplet(value, where: str) -> tuple[str, str | None]:
    if isinstance(value, str):
        interaction, obj = parse_triplet_text(value)
    elif isinstance(value, list) and len(value) in (1, 2) and all(v is None or isinstance(v, str) for v in value):
        interaction, obj = value[0], value[1] if len(value) == 2 else None
    elif isinstance(value, dict) and set(value) <= {"interaction", "object"} and "interaction" in value:
        interaction, obj = value["interaction"], value.get("object")
    else:
        raise UsageError(
            f"{where}: bad triplet {value!r} (expected [interaction, object], "
            '{"interaction": ..., "object": ...} or "Interaction, Object")'
        )
    if not isinstance(interaction, str) or not _norm(interaction):
        raise UsageError(f"{where}: triplet {value!r} has no interaction")
    if obj is not None and not isinstance(obj, str):
        raise UsageError(f"{where}: triplet {value!r}: the object must be text or null")
    return _norm(interaction), (_norm(obj) or None) if obj is not None else None


def _record(data, where: str) -> VideoText:
    if not isinstance(data, dict):
        raise UsageError(f"{where}: expected a JSON object per line, got {type(data).__name__}")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
    video = data.get("video")
    if not isinstance(video, str) or not video:
        raise UsageError(f'{where}: missing "video" (the manifest id of the video)')
    if "caption" in data and "captions" in data:
        raise UsageError(f'{where}: give "caption" or "captions", not both')
    captions = [data["caption"]] if "caption" in data else data.get("captions", [])
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise UsageError(f'{where}: "captions" must be a list of strings')
    captions = [" ".join(c.split()) for c in captions if c.strip()]
    triplets = data.get("triplets", [])
    if not isinstance(triplets, list):
        raise UsageError(f'{where}: "triplets" must be a list')
    parsed = list(dict.fromkeys(_triplet(t, where) for t in triplets))
    if not captions and not parsed:
        raise UsageError(f"{where}: video {video!r} has neither captions nor triplets")
    source = data.get("source")
    if source is not None and not isinstance(source, str):
        raise UsageError(f'{where}: "source" must be text')
    return VideoText(video=video, captions=captions, triplets=parsed, source=source)


def read_vlm_import(path: Path | str) -> dict[str, VideoText]:
    """Every video's text from a JSON-lines import, in file order; duplicates and bad lines are UsageErrors."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: VLM import file not found")
    texts: dict[str, VideoText] = {}
    first_line: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text ({exc.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{where}: not valid JSON ({exc.msg})") from None
        record = _record(data, where)
        if record.video in texts:
            raise UsageError(
                f"{where}: video {record.video!r} again (first on line {first_line[record.video]}); "
                "give each video one line"
            )
        texts[record.video] = record
        first_line[record.video] = number
    if not texts:
        raise UsageError(f"{path}: no video in the VLM import")
    return texts


def match_videos(texts: dict[str, VideoText], video_ids: list[str], where: str = "VLM import") -> list[str]:
    """The manifest's videos the import says nothing about; an id the manifest lacks is a UsageError."""
    known = set(video_ids)
    unknown = [video for video in texts if video not in known]
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UsageError(f"{where}: video {unknown[0]!r}{more} is not in the manifest")
    return [video for video in video_ids if video not in texts]


def fill_triplets(texts: dict[str, VideoText]) -> dict[str, VideoText]:
    """Videos with captions but no triplets get the rule set's triplets (``triplets_from = "rules"``)."""
    out = {}
    for video, text in texts.items():
        if text.triplets or not text.captions:
            out[video] = text
            continue
        found = list(dict.fromkeys(t for caption in text.captions for t in caption_triplets(caption)))
        out[video] = VideoText(video, list(text.captions), found, text.source, triplets_from="rules")
    return out


def write_vlm_import(texts: dict[str, VideoText], path: Path | str) -> None:
    """Write an import file (atomically) to a new path; an existing file is never replaced (it may be the user's)."""
    path = Path(path)
    if path.exists():
        raise UsageError(f"{path}: exists; choose a new output file (hoitool does not replace files)")
    with atomic_path(path) as tmp:
        tmp.write_text(
            "".join(json.dumps(t.to_json(), ensure_ascii=False) + "\n" for t in texts.values()), encoding="utf-8"
        )


def captions_to_triplets(source: Path | str, out: Path | str) -> dict[str, int]:
    """Read an import, add the rules' triplets where only captions were given, write it to ``out``.

    Returns counts: ``videos``, ``filled`` (given triplets by the rules), ``without`` (captions that gave none).
    """
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise UsageError(f"{out}: is the input file; write the triplets to another file")
    texts = read_vlm_import(source)
    filled = fill_triplets(texts)
    write_vlm_import(filled, out)
    by_rules = [t for t in filled.values() if t.triplets_from == "rules"]
    return {
        "videos": len(filled),
        "filled": sum(1 for t in by_rules if t.triplets),
        "without": sum(1 for t in by_rules if not t.triplets),
    }
