"""Schema-2 stores: immutable segments plus an index that is replaced atomically (docs/cache-format.md).

A store is a folder (``feats.h5/`` or ``feats.zarr/``) that holds::

    index.json                    {"hoitool": root metadata, "segments": [segment names]}
    segments/seg-000001.h5        HDF5 segment: one dataset per array, shape (N, *per-video shape)
    segments/seg-000001.zarr/     Zarr 3 segment: the same arrays, sharded (few files per array)
    segments/seg-000001.json      the segment's videos in row order: id, digests, stage attrs

A segment is written under a temporary name, fsynced and renamed, and never changed after;
a video is done when the index lists its segment. So a commit costs what is new (one
segment and a rewritten index), a merge of shards is an index over hard-linked segments,
and a crash at any instant leaves the previous index, whose segments are all complete
(segments it does not list are removed by the next writer, under the store's lock).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hoitool import __version__, log
from hoitool.io.atomic import fsync_dir, write_json
from hoitool.store.fingerprint import array_digests, store_fingerprint, video_digest
from hoitool.store.hdf5 import dataset_filter, h5py_module
from hoitool.store.schema import META_ATTR, SCHEMA_VERSION, video_id_from_key, video_key
from hoitool.store.zarr_rows import ShardedRows, row_reader

INDEX = "index.json"
SEGMENTS = "segments"
SEGMENT_NAME = re.compile(r"seg-(\d{6,})\.(h5|zarr|json)$")
EXTENSION = {"hdf5": "h5", "zarr": "zarr"}

# Codecs chosen by measurement (bench/store.py --codecs, docs/cache-format.md): zstd level 1 decodes a video's nodes in
# about 0.5 ms (gzip-1 2.0 ms) and compresses more; HDF5 gets it from hdf5plugin, a dependency of hoitool.
CODECS: dict[str, dict[str, Any]] = {
    "hdf5": {"name": "zstd", "level": 1},
    "zarr": {"name": "zstd", "level": 1},
}
CHUNK_BYTES = (
    8 << 10
)  # small arrays: several videos per chunk (a video's small arrays are not thousands of chunks, nor big to decode)
# Zarr: one file holds up to this much of an array (the writer buffers one shard per array). 256 MiB: at SSv2 scale
# the nodes' shards are about 400 files, against about 15 files for each of the ~25 segments (bench/store.py).
SHARD_BYTES = 256 << 20
SHARD_CHUNKS = 1024  # ... and at most this many chunks: Zarr reads a shard's index (16 bytes a chunk) on every read
# Shard files named ``<array>/c.0.0.0.0`` (Zarr 3's default encoding with "." separators), not ``<array>/c/0/0/0/0``:
# a folder per dimension tripled the inodes a segment takes on a cluster file system's quota. Readers need nothing:
# the encoding is in each array's zarr.json (stores written with "/" read as before).
CHUNK_KEYS: dict[str, Any] = {"name": "default", "separator": "."}


def is_segmented(path: Path) -> bool:
    """A schema-2 store folder (it has an index)."""
    return Path(path).is_dir() and (Path(path) / INDEX).is_file()


def read_index(path: Path) -> dict:
    return json.loads((Path(path) / INDEX).read_text())


def segment_meta(root: Path, name: str) -> dict:
    return json.loads((root / SEGMENTS / f"{Path(name).stem}.json").read_text())


def _rows(row_bytes: int, budget: int, cap: int) -> int:
    return max(1, min(cap, budget // max(1, row_bytes)))


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_tree(path: Path) -> None:
    """Make every file and folder under ``path`` durable before it is renamed into place."""
    for root, _, files in os.walk(path):
        for name in files:
            fsync_file(Path(root, name))
        fsync_dir(Path(root))


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# -- writing ------------------------------------------------------------------------------------------------------------
class SegmentWriter:
    """Rows of videos that share one signature (array names, dtypes, shapes) into one new segment file."""

    def __init__(self, folder: Path, seq: int, backend: str, kind: str, expected: int):
        self.folder, self.backend, self.kind = folder, backend, kind
        self.name = f"seg-{seq:06d}.{EXTENSION[backend]}"
        self.tmp = folder / f".{self.name}.{os.getpid()}.tmp"
        self.expected = max(1, expected)
        self.signature: tuple | None = None
        self.videos: dict = {"id": [], "digest": [], "array_digests": {}, "attrs": []}  # columns, row order
        self.buffers: dict[str, list[np.ndarray]] = {}
        self.written: dict[str, int] = {}
        self.arrays: dict = {}
        self.handle = None

    def fits(self, arrays: dict[str, np.ndarray]) -> bool:
        return self.signature is None or self.signature == _signature(arrays)

    def add(self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict) -> str:
        """Buffer one video; returns its whole-video digest (the fingerprint is made of these)."""
        if self.signature is None:
            self._create(arrays)
        digest = video_digest(arrays)
        self.videos["id"].append(video_id)
        self.videos["digest"].append(digest)
        for name, value in array_digests(arrays).items():
            self.videos["array_digests"].setdefault(name, []).append(value)
        self.videos["attrs"].append(attrs)
        for name, array in arrays.items():
            self.buffers[name].append(array)
            if len(self.buffers[name]) >= self.arrays[name]["block"]:
                self._flush(name)
        return digest

    def _create(self, arrays: dict[str, np.ndarray]) -> None:
        self.signature = _signature(arrays)
        for name, array in sorted(arrays.items()):
            row = max(1, array.nbytes)
            chunk = _rows(row, CHUNK_BYTES, self.expected)
            # HDF5 writes one chunk at a time; Zarr a whole shard (a partial shard would be rewritten)
            per_shard = min(SHARD_CHUNKS, max(1, _rows(row, SHARD_BYTES, self.expected) // chunk))
            block = chunk * per_shard if self.backend == "zarr" else chunk
            self.arrays[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "chunk": chunk, "block": block}
            self.buffers[name] = []
            self.written[name] = 0
        self.handle = _open_writer(self.backend, self.tmp, self.arrays, self.expected)

    def _flush(self, name: str) -> None:
        buffer = self.buffers[name]
        if not buffer:
            return
        start = self.written[name]
        rows = buffer[0][None] if len(buffer) == 1 else np.stack(buffer)  # one row: a view, not a copy
        _write_rows(self.backend, self.handle, name, start, rows, self.arrays[name])
        self.written[name] = start + len(buffer)
        self.buffers[name] = []

    def finish(self) -> str:
        """Write what is buffered, trim, make it durable and give it its final name (then it never changes)."""
        for name in self.arrays:
            self._flush(name)
        _close_writer(self.backend, self.handle, self.arrays, len(self.videos["id"]))
        self.handle = None
        fsync_tree(self.tmp) if self.tmp.is_dir() else fsync_file(self.tmp)
        os.replace(self.tmp, self.folder / self.name)
        arrays = {name: {"dtype": info["dtype"], "shape": info["shape"]} for name, info in self.arrays.items()}
        meta = {"backend": self.backend, "kind": self.kind, "codec": CODECS[self.backend], "arrays": arrays}
        write_json(self.folder / f"{Path(self.name).stem}.json", {**meta, "videos": self.videos})
        fsync_dir(self.folder)
        return self.name

    def abort(self) -> None:
        if self.handle is not None and self.backend == "hdf5":
            self.handle.close()
        self.handle = None
        remove_path(self.tmp)


def _signature(arrays: dict[str, np.ndarray]) -> tuple:
    return tuple(sorted((name, array.dtype.str, array.shape) for name, array in arrays.items()))


def _open_writer(backend: str, tmp: Path, arrays: dict, rows: int):
    codec = CODECS[backend]
    if backend == "hdf5":
        handle = h5py_module().File(tmp, "w")
        for name, info in arrays.items():
            shape = tuple(info["shape"])
            compress = dataset_filter(codec) if int(np.prod(shape)) > 16 else {}
            handle.create_dataset(
                name,
                shape=(rows, *shape),
                maxshape=(None,) * (len(shape) + 1),
                chunks=(info["chunk"], *(max(1, d) for d in shape)),
                dtype=np.dtype(info["dtype"]),
                **compress,
            )
        return handle
    import zarr
    from zarr.codecs import ZstdCodec

    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    for name, info in arrays.items():
        shape = tuple(info["shape"])
        inner = tuple(max(1, d) for d in shape)
        group.create_array(
            name,
            shape=(rows, *shape),
            chunks=(info["chunk"], *inner),
            shards=(info["block"], *inner),
            dtype=np.dtype(info["dtype"]),
            compressors=[ZstdCodec(level=codec["level"])],
            fill_value=0,
            chunk_key_encoding=CHUNK_KEYS,
        )
    return group


def _write_rows(backend: str, handle, name: str, start: int, block: np.ndarray, info: dict) -> None:
    array = handle[name]
    end = start + len(block)
    if end > array.shape[0]:  # more videos than expected: grow (metadata only)
        new = (max(end, 2 * array.shape[0]), *array.shape[1:])
        array.resize(new)
    array[start:end] = block


def _close_writer(backend: str, handle, arrays: dict, rows: int) -> None:
    for name in arrays:
        array = handle[name]
        if array.shape[0] != rows:
            array.resize((rows, *array.shape[1:]))
    if backend == "hdf5":
        handle.close()


def write_segments(
    folder: Path,
    backend: str,
    kind: str,
    items: Iterable[tuple[str, dict, dict]],
    first_seq: int,
    expected: int,
) -> tuple[list[str], dict[str, str]]:
    """Write ``(video_id, arrays, attrs)`` items into new segments (a new one when the signature changes)."""
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    digests: dict[str, str] = {}
    writer: SegmentWriter | None = None
    seq = first_seq
    try:
        for video_id, arrays, attrs in items:
            if writer is not None and not writer.fits(arrays):
                names.append(writer.finish())
                writer, seq = None, seq + 1
            if writer is None:
                writer = SegmentWriter(folder, seq, backend, kind, expected - len(digests))
            digests[video_id] = writer.add(video_id, arrays, attrs)
        if writer is not None:
            names.append(writer.finish())
            writer = None
    finally:
        if writer is not None:
            writer.abort()
    return names, digests


def next_seq(folder: Path) -> int:
    """One past the highest segment number in ``folder`` (listed or not): names are never reused."""
    numbers = [int(m.group(1)) for m in map(SEGMENT_NAME.match, os.listdir(folder) if folder.is_dir() else []) if m]
    return max(numbers, default=0) + 1


def segment_ids(folder: Path, name: str) -> list[str]:
    return json.loads((folder / f"{Path(name).stem}.json").read_text())["videos"]["id"]


def all_digests(root: Path, segments: list[str], known: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """Video id -> digest over the listed segments (``known``: per segment, already read by the caller)."""
    digests: dict[str, str] = {}
    for name in segments:
        if known and name in known:
            digests.update(known[name])
        else:
            videos = segment_meta(root, name)["videos"]
            digests.update(zip(videos["id"], videos["digest"], strict=True))
    return digests


def commit(
    path: Path,
    backend: str,
    kind: str,
    items: Iterable[tuple[str, dict, dict]],
    expected: int,
    base_meta: dict,
    keep: list[str] | None = None,
    staged: list[tuple[Path, list[str]]] | None = None,
    known: dict | None = None,
) -> dict:
    """Add new segments to the store at ``path`` and write its index: ``keep`` (its segments that stay),
    ``staged`` (finished segments elsewhere, hard-linked in: no data is written) and one holding ``items``.

    A store that does not exist yet is built in a temporary folder and renamed into place,
    so a folder at ``path`` always has an index.
    """
    fresh = not path.exists()
    root = path.with_name(f".{path.name}.{os.getpid()}.tmp") if fresh else path
    try:
        keep = list(keep or [])
        linked = link_segments(staged or [], root)
        names, _ = write_segments(root / SEGMENTS, backend, kind, items, next_seq(root / SEGMENTS), expected)
        meta = write_index(root, kind, backend, keep + linked + names, base_meta, known)
        if fresh:
            fsync_tree(root)
            os.replace(root, path)
            fsync_dir(path.parent)
    except BaseException:
        if fresh:
            remove_path(root)
        raise
    return meta


def write_index(
    root: Path, kind: str, backend: str, segments: list[str], base_meta: dict, known: dict | None = None
) -> dict:
    """The index lists the segments and holds the root metadata; replacing it atomically is the commit."""
    digests = all_digests(root, segments, known)
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "hoitool_version": __version__,
        **base_meta,
        "codec": CODECS[backend],
        "fingerprint": store_fingerprint(kind, digests),
        "num_videos": len(digests),
        "num_segments": len(segments),
    }
    write_json(root / INDEX, {META_ATTR: meta, "segments": segments})
    return meta


def link_segments(sources: list[tuple[Path, list[str]]], root: Path) -> list[str]:
    """Hard-link segments (``(folder, names)``: other stores' ``segments/``, a run's ``.parts``) into ``root``
    under new names: no array data is written.

    Hard links (not references) so the merged store survives moving or deleting its inputs;
    across file systems, where a link is impossible, the segment files are copied.
    """
    folder = root / SEGMENTS
    folder.mkdir(parents=True, exist_ok=True)
    names, seq, copied = [], next_seq(folder), False
    for source, segments in sources:
        for name in segments:
            suffix = Path(name).suffix
            new = f"seg-{seq:06d}{suffix}"
            copied |= _link(source / name, folder / new)
            copied |= _link(source / f"{Path(name).stem}.json", folder / f"seg-{seq:06d}.json")
            names.append(new)
            seq += 1
    if copied:
        log.info(f"{root}: some inputs are on another file system; their segments were copied, not linked")
    return names


def _link(source: Path, target: Path) -> bool:
    """Link a file, or every file of a folder; True when it had to copy."""
    if source.is_dir():
        copied = False
        for dirpath, _, files in os.walk(source):
            relative = Path(dirpath).relative_to(source)
            (target / relative).mkdir(parents=True, exist_ok=True)
            for name in files:
                copied |= _link(Path(dirpath, name), target / relative / name)
        return copied
    try:
        os.link(source, target)
        return False
    except OSError:
        shutil.copy2(source, target)
        fsync_file(target)
        return True


def raw_bytes(names: list[str], folder: Path) -> int:
    """Uncompressed bytes of the videos in these segments, from their metadata."""
    total = 0
    for name in names:
        meta = json.loads((folder / f"{Path(name).stem}.json").read_text())
        total += row_bytes(meta["arrays"]) * len(meta["videos"]["id"])
    return total


def row_bytes(arrays: dict) -> int:
    return sum(int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize for info in arrays.values())


def finished_segments(folder: Path) -> list[str]:
    """Segments in ``folder`` whose ``.json`` exists (it is written last: the segment is complete)."""
    if not folder.is_dir():
        return []
    names: list[str] = []
    for meta in sorted(folder.glob("seg-*.json")):
        data = [entry for entry in folder.glob(f"{meta.stem}.*") if entry.suffix in (".h5", ".zarr")]
        names.extend(entry.name for entry in data)
    return names


def remove_unfinished_segments(folder: Path) -> None:
    """Segment files without their ``.json`` (a writer killed between the two renames) and temporaries."""
    finished = {Path(name).stem for name in finished_segments(folder)}
    for entry in folder.iterdir() if folder.is_dir() else []:
        match = SEGMENT_NAME.match(entry.name)
        if (match and entry.suffix != ".json" and f"seg-{match.group(1)}" not in finished) or (
            entry.name.startswith(".seg-") and entry.name.endswith(".tmp")
        ):
            remove_path(entry)


def clean_orphans(path: Path) -> None:
    """Remove segments the index does not list and temporaries in the store (call only while holding its lock)."""
    if not is_segmented(path):
        return
    listed = {Path(name).stem for name in read_index(path).get("segments", [])}
    for leftover in path.glob(f".{INDEX}.*.tmp"):
        leftover.unlink()
    folder = path / SEGMENTS
    for entry in folder.iterdir() if folder.is_dir() else []:
        match = SEGMENT_NAME.match(entry.name)
        if (match and f"seg-{match.group(1)}" not in listed) or (
            entry.name.startswith(".") and entry.name.endswith(".tmp")
        ):
            remove_path(entry)


# -- reading ------------------------------------------------------------------------------------------------------------
class SegmentedBackend:
    """Read-only view of a schema-2 store with the interface of the single-file backends."""

    def __init__(self, path: Path | str, mode: str = "r"):
        if mode != "r":
            raise ValueError("segmented stores are written through hoitool.store.segments, not opened for writing")
        self.path = Path(path)
        index = read_index(self.path)
        self.meta = index[META_ATTR]
        self.segments: list[str] = list(index["segments"])
        self.entries: dict[str, tuple[str, int]] = {}  # video key -> (segment, row)
        self.columns: dict[str, dict] = {}  # segment -> its videos' columns (ids, digests, attrs)
        self.layout: dict[str, dict] = {}
        self.codecs: dict[str, dict] = {}  # segment -> its codec (a store's segments can differ: docs/cache-format.md)
        for name in self.segments:
            meta = segment_meta(self.path, name)
            self.layout[name] = meta["arrays"]
            self.codecs[name] = meta.get("codec", {})
            self.columns[name] = meta["videos"]
            for row, video_id in enumerate(meta["videos"]["id"]):
                self.entries[video_key(video_id)] = (name, row)
        self._open: dict[str, _SegmentReader] = {}
        # The small arrays (boxes, valid, ...; 2% of a video's bytes at T=32, K=15, D=512) are read whole, once per
        # process, when the store's fit HELD_BYTES: a read costs zarr ~1 ms of its machinery whatever its size, and
        # h5py 0.04 ms for each bool array (its enum conversion), against 0.5 ms for a video's nodes
        self._held = _small_arrays(self.layout, self.columns)

    def read_meta(self) -> dict:
        return self.meta

    def open_segments(self) -> None:
        """Open every segment file now (a few per store), so a damaged one fails before any work, naming it."""
        for name in self.segments:
            try:
                self._segment(name)
            except Exception as exc:  # h5py raises OSError/RuntimeError, zarr FileNotFoundError/ValueError
                raise OSError(f"segment {name}: {str(exc).strip() or type(exc).__name__}") from None

    def video_keys(self) -> list[str]:
        return sorted(self.entries)

    def video_ids(self) -> list[str]:
        return sorted(video_id_from_key(key) for key in self.entries)

    def _segment(self, name: str):
        handle = self._open.get(name)
        if handle is None:
            handle = _SegmentReader(self.path / SEGMENTS / name, self._held.get(name, ()))
            self._open[name] = handle
        return handle

    def digests(self) -> dict[str, dict[str, str]]:
        """Per segment: video id -> digest (what the next index needs, without reading the segments again)."""
        return {name: dict(zip(videos["id"], videos["digest"], strict=True)) for name, videos in self.columns.items()}

    def raw_bytes(self) -> int:
        return sum(row_bytes(self.layout[name]) * len(self.columns[name]["id"]) for name in self.segments)

    def array_names(self, key: str) -> list[str]:
        name, _ = self.entries[key]
        return self._segment(name).names()

    def read_video(self, key: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        name, row = self.entries[key]
        segment = self._segment(name)
        return {array: segment.read(array, row) for array in (names or sorted(self.layout[name]))}

    def open_video(self, key: str):
        """``(attrs with digests, read(names))``, as the single-file backends give it (for ``checked_read``)."""
        name, row = self.entries[key]
        videos = self.columns[name]
        recorded = {array: values[row] for array, values in videos["array_digests"].items()}
        attrs = dict(videos["attrs"][row], digest=videos["digest"][row], array_digests=recorded)
        return attrs, lambda names: self.read_video(key, names)

    def video_attrs(self, key: str) -> dict:
        return self.open_video(key)[0]

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()
        self._open = {}


# Zarr segments: arrays of at most SMALL_ROW_BYTES a video are held whole in each reading process, when all of the
# store's such arrays take at most HELD_BYTES (about 30,000 videos at T=32, K=15, one view): docs/cache-format.md
SMALL_ROW_BYTES = 64 << 10
HELD_BYTES = 256 << 20


def _small_arrays(layout: dict[str, dict], columns: dict[str, dict]) -> dict[str, tuple[str, ...]]:
    """Per segment, the arrays a reader holds whole (none when the store's small arrays exceed HELD_BYTES)."""
    held: dict[str, tuple[str, ...]] = {}
    total = 0
    for segment, arrays in layout.items():
        small = {name: row_bytes({name: info}) for name, info in arrays.items()}
        small = {name: size for name, size in small.items() if size <= SMALL_ROW_BYTES}
        total += sum(small.values()) * len(columns[segment]["id"])
        held[segment] = tuple(sorted(small))
    return held if total <= HELD_BYTES else {}


class _SegmentReader:
    """One segment file opened once per process; rows are read one video at a time.

    ``hold`` names arrays read whole on first use and served from memory after (Zarr's
    small arrays: one read instead of one per video). If reading one whole fails (a
    damaged chunk of some other video), that array falls back to per-row reads, so only
    the damaged videos fail, as without holding.
    """

    def __init__(self, path: Path, hold: Iterable[str] = ()):
        self.path = path
        self.hold = set(hold)
        self.held: dict[str, np.ndarray] = {}
        self.hdf5 = path.suffix == ".h5"
        if self.hdf5:
            self.handle = h5py_module().File(path, "r")
        else:
            import zarr

            if not path.is_dir():
                raise FileNotFoundError(f"segment {path.name} is missing")
            self.handle = zarr.open_group(str(path), mode="r", zarr_format=3)
        self.arrays: dict[str, Any] = {}
        self.rows: dict[str, ShardedRows | None] = {}  # each opened array's direct row reader (Zarr, where it applies)

    def names(self) -> list[str]:
        return sorted(self.handle.keys()) if self.hdf5 else sorted(self.handle.array_keys())

    def read(self, name: str, row: int) -> np.ndarray:
        array = self.arrays.get(name)
        if array is None:
            array = self.handle[name]  # KeyError when the array is gone: checked_read reports the video as damaged
            self.arrays[name] = array
            self.rows[name] = None if self.hdf5 else row_reader(self.path / name, array)
        elif not self.hdf5 and not os.path.exists(self.path / name / "zarr.json"):
            raise KeyError(name)  # deleted since it was opened: already-verified reads must still see it
        if name in self.hold:
            held = self.held.get(name)
            if held is None:
                try:
                    held = self.held[name] = np.asarray(array[...])
                except Exception:  # some chunk is unreadable: read row by row, so it fails only its own videos
                    self.hold.discard(name)
                    return np.asarray(array[row])
            return held[row].copy()  # a copy: a caller that edits its arrays must not edit the held ones
        rows = self.rows[name]
        return rows.read(row) if rows is not None else np.asarray(array[row])

    def close(self) -> None:
        if self.hdf5:
            self.handle.close()


def segment_items(folder: Path, name: str):
    """``(video_id, arrays, attrs)`` of every video of one segment file, in row order (a rewrite reads them)."""
    meta = json.loads((folder / f"{Path(name).stem}.json").read_text())
    reader = _SegmentReader(folder / name)
    try:
        videos = meta["videos"]
        for row, video_id in enumerate(videos["id"]):
            yield video_id, {array: reader.read(array, row) for array in sorted(meta["arrays"])}, videos["attrs"][row]
    finally:
        reader.close()


def items_of(ids: Iterable[str], read: Callable[[str], tuple[dict, dict]]):
    """``(video_id, arrays, attrs)`` with the digests taken out of the attrs (the segment writer records fresh ones)."""
    for video_id in ids:
        arrays, attrs = read(video_id)
        attrs = {key: value for key, value in attrs.items() if key not in ("digest", "array_digests")}
        yield video_id, arrays, attrs
