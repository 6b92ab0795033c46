"""What hoitool may overwrite or delete: only stores, ``.parts`` folders and ``.old`` copies it wrote itself.

A store is ours when it opens as a hoitool store of the expected kind (root metadata with
``schema_version`` and ``kind``) and, for a folder (a schema-2 store, or a schema-1 Zarr
store), holds nothing but the files of the store layout. A ``.parts`` folder is ours when it holds nothing but staged parts, its
header and its failure log. Anything else at an output path is refused before any work
starts, so ``--force`` can never delete a dataset or a user's files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from hoitool.errors import UsageError
from hoitool.store.backends import backend_name, open_backend
from hoitool.store.schema import ARRAYS, OPTIONAL_ARRAYS, READABLE_SCHEMAS
from hoitool.store.segments import INDEX, SEGMENT_NAME, SEGMENTS, is_segmented

ARRAY_NAMES = {name for arrays in (*ARRAYS.values(), *OPTIONAL_ARRAYS.values()) for name in arrays}
PARTS_FILES = ("header.json", "failures.jsonl")
# zarr-python writes each key to "<key minus its last suffix>.<uuid4 hex>.partial" and renames it into place
# (zarr.storage._local._atomic_write): a writer killed mid-write leaves one inside its temporary segment.
ZARR_PARTIAL = re.compile(r"[^/]+\.[0-9a-f]{32}\.partial")


def _zarr_file_is_ours(parts: tuple[str, ...]) -> bool:
    """True for the relative paths a hoitool Zarr store holds (group/array metadata and chunk files)."""
    if parts in (("zarr.json",), ("videos", "zarr.json")):
        return True
    if len(parts) == 3 and parts[0] == "videos" and parts[2] == "zarr.json":
        return True
    if len(parts) >= 4 and parts[0] == "videos" and parts[2] in ARRAY_NAMES:
        rest = parts[3:]
        return rest == ("zarr.json",) or (rest[0] == "c" and all(part.isdigit() for part in rest[1:]))
    return False


def _segmented_file_is_ours(parts: tuple[str, ...]) -> bool:
    """True for the relative paths of a schema-2 store: its index, segments, their metadata and temporaries."""
    name = parts[0]
    if len(parts) == 1:
        return name == INDEX or (name.startswith(f".{INDEX}.") and name.endswith(".tmp"))
    if name != SEGMENTS:
        return False
    segment = parts[1]
    temporary = segment.startswith(".seg-") and segment.endswith(".tmp")
    if len(parts) == 2:
        return bool(SEGMENT_NAME.match(segment)) or temporary
    if not (segment.endswith(".zarr") and SEGMENT_NAME.match(segment)) and not temporary:
        return False
    rest = parts[2:]  # inside a Zarr segment: its zarr.json, each array's zarr.json and shard files
    if rest == ("zarr.json",):
        return True
    if temporary and ZARR_PARTIAL.fullmatch(rest[-1]) and (len(rest) == 1 or rest[0] in ARRAY_NAMES):
        return True  # a killed writer's half-written key: the whole temporary segment is removed on resume
    return rest[0] in ARRAY_NAMES and (
        rest[1:] == ("zarr.json",)
        or (len(rest) > 2 and rest[1] == "c" and all(part.isdigit() for part in rest[2:]))
        or (len(rest) == 2 and _dotted_shard_key(rest[1]))
    )


def _dotted_shard_key(name: str) -> bool:
    """A shard file ``c.0.0.0`` (Zarr 3's default chunk keys with "." separators, segments.CHUNK_KEYS)."""
    head, *indices = name.split(".")
    return head == "c" and bool(indices) and all(index.isdigit() for index in indices)


def store_file_is_ours(parts: tuple[str, ...]) -> bool:
    return _segmented_file_is_ours(parts) or _zarr_file_is_ours(parts)


def foreign_files(path: Path, layout) -> list[str]:
    """Files (and links) under the directory ``path`` that ``layout(relative parts)`` does not claim."""
    found = []
    for root, dirs, files in os.walk(path):
        for name in files + [name for name in dirs if os.path.islink(os.path.join(root, name))]:
            relative = Path(root, name).relative_to(path)
            if os.path.islink(os.path.join(root, name)) or not layout(relative.parts):
                found.append(str(relative))
    return sorted(found)


def _parts_file_is_ours(parts: tuple[str, ...]) -> bool:
    """Staged parts, the header, the failure log, temporaries and checkpoint segments (``seg-*``)."""
    name = parts[-1]
    if len(parts) == 1 and (
        name in PARTS_FILES or name.endswith(".npz") or (name.startswith(".") and name.endswith(".tmp"))
    ):
        return True
    return _segmented_file_is_ours((SEGMENTS, *parts))


def _listing(found: list[str]) -> str:
    return ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")


def why_not_ours(path: Path, kind: str, backend_kind: str | None = None) -> str | None:
    """Why ``path`` is not a hoitool ``kind`` store that hoitool may replace; None when it is one or is missing.

    A schema-2 store is a folder with an index; a schema-1 store an HDF5 file or a Zarr folder.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink():
        return "is a symbolic link"
    zarr = (backend_kind or backend_name(path)) == "zarr"
    if zarr and not path.is_dir():
        return "is a file, not a Zarr store folder"
    if path.is_dir():
        if not is_segmented(path) and not (zarr and (path / "zarr.json").is_file()):
            return "is a folder without a hoitool store index"
        found = foreign_files(path, _segmented_file_is_ours if is_segmented(path) else _zarr_file_is_ours)
        if found:
            return f"holds files hoitool did not write ({_listing(found)})"
    try:
        backend = open_backend(path, "r", backend_kind)
        try:
            meta = backend.read_meta()
        finally:
            backend.close()
    except Exception as exc:  # any unreadable file is not provably ours
        return f"cannot be read as a hoitool store ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if not isinstance(meta, dict) or "kind" not in meta or "schema_version" not in meta:
        return "has no hoitool store metadata"
    if meta["kind"] != kind:
        return f"is a hoitool {meta['kind']} store, not a {kind} store"
    if meta["schema_version"] not in READABLE_SCHEMAS:
        return f"has store schema {meta['schema_version']} (this hoitool reads {READABLE_SCHEMAS})"
    return None


def why_parts_not_ours(parts: Path, kind: str) -> str | None:
    """Why the staging folder ``parts`` is not one that hoitool wrote for a ``kind`` store; None when it is (or is missing)."""
    if not parts.exists() and not parts.is_symlink():
        return None
    if parts.is_symlink() or not parts.is_dir():
        return "is not a hoitool staging folder"
    found = foreign_files(parts, _parts_file_is_ours)
    if found:
        return f"holds files hoitool did not write ({_listing(found)})"
    header = parts / "header.json"
    if header.exists():
        try:
            recorded = json.loads(header.read_text())
        except (OSError, ValueError):
            return "has an unreadable header.json"
        if not isinstance(recorded, dict) or recorded.get("kind", kind) != kind:
            return f"holds parts of a {recorded.get('kind') if isinstance(recorded, dict) else '?'} store, not a {kind} store"
    return None


def check_ours(path: Path, kind: str, what: str | None = None) -> None:
    """Refuse (exit 2, nothing touched) an output path, its ``.parts`` or ``.old`` that hoitool did not write."""
    what = what or f"{kind} store"
    path = Path(path)
    candidates = [(path, why_not_ours(path, kind))]
    parts = path.with_name(path.name + ".parts")
    candidates.append((parts, why_parts_not_ours(parts, kind)))
    old = path.with_name(path.name + ".old")
    candidates.append((old, why_not_ours(old, kind, backend_name(path))))
    for location, reason in candidates:
        if reason:
            raise UsageError(
                f"{location}: {reason}; hoitool writes only over a {what} it wrote itself, so nothing was touched "
                "(choose another --out or move it away)"
            )


def remove_store(path: Path) -> None:
    """Delete a store (HDF5 file or Zarr folder) that :func:`check_ours` accepted, never any other file."""
    path = Path(path)
    if path.is_file() or path.is_symlink():
        path.unlink()
    elif path.is_dir():
        _remove_claimed(path, store_file_is_ours)


def remove_parts(parts: Path) -> None:
    """Delete a staging folder's own files, then the folder if nothing else is left in it."""
    if parts.is_dir():
        _remove_claimed(parts, _parts_file_is_ours)


def _remove_claimed(path: Path, layout) -> None:
    """Remove the files ``layout`` claims, then empty folders bottom-up; foreign files (and their folders) stay."""
    if not foreign_files(path, layout):
        shutil.rmtree(path)
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            if layout(Path(root, name).relative_to(path).parts):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            try:
                os.rmdir(os.path.join(root, name))
            except OSError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        pass
