"""Source ``import``: an external detector's output in the boxes JSON-lines format (docs/boxes-jsonl.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hoitool.boxes.registry import IMPORT_FILE, register_box_source
from hoitool.boxes.sources.common import FileBoxes, annotated_frames
from hoitool.errors import UsageError

if TYPE_CHECKING:
    from hoitool.manifest import Manifest


@dataclass(frozen=True)
class ImportSource:
    name: str = "import"
    summary: str = "an external detector's boxes JSON-lines file, --import FILE"
    needs: str = IMPORT_FILE

    def check(self, config: dict) -> None:
        if not config["import_file"]:
            raise UsageError("source=import needs --import FILE (boxes JSON-lines, docs/boxes-jsonl.md)")
        path = Path(config["import_file"])
        if not path.exists():
            raise UsageError(f"{path}: boxes file to import not found")

    def read(self, manifest: Manifest, video: Any, indices: Any, config: dict) -> dict:
        return {"annotated": annotated_frames(Path(config["import_file"]), video.id)}

    def start(self, config: dict) -> FileBoxes:
        """The file's content is part of what the boxes depend on (its fingerprint goes in provenance)."""
        from hoitool.io.digest import file_sha256

        return FileBoxes({"import_file": file_sha256(Path(config["import_file"]))[:16]})


register_box_source(ImportSource())
