"""``cache info``, ``cache verify`` and ``cache merge`` as library functions."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from hoitool.errors import UsageError
from hoitool.io.lock import release
from hoitool.store.backends import backend_name
from hoitool.store.fingerprint import array_digests, store_fingerprint, video_digest
from hoitool.store.ownership import check_ours
from hoitool.store.reader import StoreReader, open_store
from hoitool.store.schema import ARRAYS, OPTIONAL_ARRAYS
from hoitool.store.segments import (
    SEGMENTS,
    clean_orphans,
    finished_segments,
    fsync_tree,
    is_segmented,
    items_of,
    link_segments,
    next_seq,
    read_index,
    remove_path,
    segment_ids,
    write_index,
    write_segments,
)
from hoitool.store.staging import clean_temporaries, sidecar, swap_in, write_failures, write_store, writer_lock


def disk_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def store_info(path: Path) -> dict:
    """What a user wants to know about a store without opening Python (damaged videos are counted, not fatal)."""
    reader = open_store(path)
    shapes: dict[str, list] = {}
    dtypes: dict[str, str] = {}
    if is_segmented(path):  # from the segments' metadata: O(segments), not a read of every video
        raw_bytes, unreadable = _segment_summary(reader._open(), shapes, dtypes)
    else:
        raw_bytes, unreadable = 0, []
        for video_id in reader.video_ids:
            try:
                arrays = reader.read_unchecked(video_id)
            except Exception:  # cache verify names the problem; info only counts it
                unreadable.append(video_id)
                continue
            for name, array in arrays.items():
                _note_shape(shapes, dtypes, name, list(array.shape), str(array.dtype))
                raw_bytes += array.nbytes
    parts = Path(path).with_name(Path(path).name + ".parts")
    on_disk = disk_bytes(path)
    segments = read_index(path)["segments"] if is_segmented(path) else []
    files = sum(1 for _ in Path(path).rglob("*") if _.is_file()) if Path(path).is_dir() else 1
    return {
        "path": str(path),
        "kind": reader.kind,
        "schema_version": reader.attrs["schema_version"],
        "fingerprint": reader.fingerprint,
        "videos_done": len(reader.video_ids),
        "videos_failed": len(reader.attrs.get("failed", [])),
        "videos_unreadable": unreadable,
        "failed": reader.attrs.get("failed", []),
        "partial": reader.partial,
        "unfinished_parts": _unfinished(parts),
        "shapes": {name: value[:3] for name, value in shapes.items()},
        "dtypes": dtypes,
        "bytes_on_disk": on_disk,
        "bytes_uncompressed": raw_bytes,
        "compression_ratio": raw_bytes / on_disk if on_disk else None,
        "segments": len(segments),
        "files": files,
        "files_per_video": files / len(reader.video_ids) if reader.video_ids else None,
        "codec": _codec(reader),
        "provenance": reader.provenance,
        **{
            key: reader.attrs.get(key)
            for key in ("views", "num_frames", "max_boxes", "dim", "frames", "clips", "source")
            if key in reader.attrs
        },
    }


def _codec(reader: StoreReader) -> dict | list[dict]:
    """The store's codec, or the distinct codecs of its segments when they differ (videos added after an upgrade)."""
    backend = reader._open()
    distinct: list[dict] = []
    for codec in getattr(backend, "codecs", {}).values():
        if codec not in distinct:
            distinct.append(codec)
    if len(distinct) > 1:
        return distinct
    return distinct[0] if distinct else reader.attrs.get("codec", {"name": "gzip", "level": 4, "shuffle": True})


def _note_shape(shapes: dict, dtypes: dict, name: str, shape: list, dtype: str) -> None:
    shapes.setdefault(name, [])
    if shape not in shapes[name]:
        shapes[name].append(shape)
    dtypes[name] = dtype


def _segment_summary(backend, shapes: dict, dtypes: dict) -> tuple[int, list[str]]:
    """Raw bytes and shapes from the segments' metadata; a segment that does not open, or lacks an
    array, makes its videos unreadable (a deleted Zarr shard reads as zeros: only ``cache verify`` sees it)."""
    raw_bytes, unreadable = 0, []
    for name in backend.segments:
        ids = backend.columns[name]["id"]
        try:
            present = set(backend._segment(name).names())
        except Exception:
            present = set()
        if not set(backend.layout[name]) <= present:
            unreadable.extend(ids)
        for array, info in backend.layout[name].items():
            dtype = np.dtype(info["dtype"])
            _note_shape(shapes, dtypes, array, list(info["shape"]), str(dtype))
            raw_bytes += int(np.prod(info["shape"])) * dtype.itemsize * len(ids)
    return raw_bytes, sorted(unreadable)


def _unfinished(parts: Path) -> int:
    """Videos staged by a run that has not committed yet (parts and checkpoint segments)."""
    if not parts.exists():
        return 0
    staged = sum(len(segment_ids(parts, name)) for name in finished_segments(parts))
    return len(list(parts.glob("*.npz"))) + staged


def verify_store(path: Path) -> list[str]:
    """Every video readable, finite, consistent with the schema and its digests; returns problems found."""
    reader = open_store(path)
    kind = reader.kind
    problems: list[str] = []
    digests: dict[str, str] = {}
    expected = {**ARRAYS[kind], **OPTIONAL_ARRAYS.get(kind, {})}
    for video_id in reader.video_ids:
        where = f"{path}: video {video_id!r}"
        try:
            arrays = reader.read_unchecked(video_id)
            attrs = reader.video_attrs(video_id)
        except Exception as exc:  # any read error is a finding, not a crash
            problems.append(
                f"{where}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            )
            continue
        recorded = attrs.get("array_digests") or {}
        missing = (set(ARRAYS[kind]) | set(recorded)) - set(arrays)
        if missing:
            problems.append(f"{where}: missing arrays {sorted(missing)}")
            continue
        for name, array in arrays.items():
            dtype, ndim = expected.get(name, (None, None))
            if dtype is None:
                problems.append(f"{where}: unexpected array {name!r}")
            elif str(array.dtype) != dtype or array.ndim != ndim:
                problems.append(
                    f"{where}: {name} is {array.dtype} with {array.ndim} dims, expected {dtype} with {ndim}"
                )
            elif array.dtype.kind == "f" and not np.isfinite(array).all():
                problems.append(f"{where}: {name} holds non-finite values")
        valid = arrays["valid"]
        if arrays["boxes"].shape[:-1] != valid.shape:
            problems.append(f"{where}: boxes {arrays['boxes'].shape} do not match valid {valid.shape}")
        if kind == "features" and arrays["nodes"].shape[:-1] != valid.shape:
            problems.append(f"{where}: nodes {arrays['nodes'].shape} do not match valid {valid.shape}")
        if arrays["frame_valid"].shape != valid.shape[:2]:
            problems.append(f"{where}: frame_valid {arrays['frame_valid'].shape} does not match valid {valid.shape}")
        digest = video_digest(arrays)
        digests[video_id] = digest
        changed = [name for name, value in array_digests(arrays).items() if recorded and recorded.get(name) != value]
        if attrs.get("digest") != digest or changed:
            detail = f" ({', '.join(changed)})" if changed else ""
            problems.append(
                f"{where}: content does not match its recorded digest{detail} (modified or damaged after writing)"
            )
    if not problems and store_fingerprint(kind, digests) != reader.fingerprint:
        problems.append(f"{path}: store fingerprint does not match its videos")
    return problems


def shard_set_problems(readers: list) -> tuple[list[str], dict]:
    """What keeps the inputs from being one complete ``--shard i/n`` set, and which shards they are."""
    problems: list[str] = []
    seen: dict[tuple[int, int], Path] = {}
    for reader in readers:
        shard = reader.provenance.get("shard")
        if not (isinstance(shard, (list, tuple)) and len(shard) == 2):
            problems.append(f"{reader.path} was not written with --shard i/n")
            continue
        index, count = int(shard[0]), int(shard[1])
        if (index, count) in seen:
            raise UsageError(f"cache merge: shard {index}/{count} given twice ({seen[index, count]} and {reader.path})")
        seen[index, count] = reader.path
    counts = sorted({count for _, count in seen})
    if len(counts) > 1:
        problems.append(f"the shards come from different splits (n = {', '.join(map(str, counts))})")
    missing = [f"{index}/{count}" for count in counts for index in range(count) if (index, count) not in seen]
    if missing:
        problems.append(f"shard{'s' if len(missing) > 1 else ''} {', '.join(missing[:8])} missing")
    found = [f"{index}/{count}" for index, count in sorted(seen)]
    return problems, {"shards": found, "missing_shards": missing, "problems": problems}


def _inputs(readers: list) -> list[dict]:
    return [
        {"path": str(reader.path), "fingerprint": reader.fingerprint, "shard": reader.provenance.get("shard")}
        for reader in readers
    ]


def _same_merge(out: Path, readers: list, partial: dict | None) -> dict | None:
    """The metadata of ``out`` when it is already the merge of exactly these inputs (a re-run is then a no-op)."""
    if not out.exists():
        return None
    existing = open_store(out)
    recorded = existing.provenance.get("merged_inputs") or []
    if sorted(item["fingerprint"] for item in recorded) != sorted(reader.fingerprint for reader in readers):
        return None
    if existing.attrs.get("header") != readers[0].attrs.get("header") or bool(existing.partial) != bool(partial):
        return None
    return dict(existing.attrs, unchanged=True)


def merge_stores(shards: list[Path], out: Path, force: bool = False, allow_partial: bool = False) -> dict:
    """Merge a complete set of shard stores (same kind, config and upstream) into one store equal to a single run.

    An incomplete or mixed set is refused unless ``allow_partial``; the result then records
    what is missing under ``partial`` (``cache info`` shows it, every reader warns). A merge
    that already produced ``out`` from the same inputs is not redone (``unchanged`` in the result).
    """
    if not shards:
        raise UsageError("cache merge: no input stores given")
    out = Path(out)
    if any(Path(path).resolve() == out.resolve() for path in shards):
        raise UsageError(f"{out}: is also one of the inputs; merge into a new path")
    readers = [open_store(path) for path in shards]
    first = readers[0]
    for reader in readers[1:]:
        if reader.kind != first.kind:
            raise UsageError(f"{reader.path}: is a {reader.kind} store, {first.path} is a {first.kind} store")
        if reader.attrs.get("header") != first.attrs.get("header"):
            raise UsageError(f"{reader.path}: made with a different config or upstream than {first.path}; cannot merge")
    check_ours(out, first.kind)
    lock = writer_lock(out)
    try:
        clean_temporaries(out)
        return _merge(readers, out, force, allow_partial)
    finally:
        release(lock)


def _merge(readers: list, out: Path, force: bool, allow_partial: bool) -> dict:
    first = readers[0]
    problems, shard_set = shard_set_problems(readers)
    if problems and not allow_partial:
        raise UsageError(
            f"cache merge: {'; '.join(problems)}; give every shard 0..n-1 of one --shard split, "
            "or --allow-partial to write a store marked partial"
        )
    partial = shard_set if problems else None
    owner: dict[str, StoreReader] = {}
    for reader in readers:
        for video_id in reader.video_ids:
            if video_id in owner:
                raise UsageError(f"video {video_id!r} is in both {owner[video_id].path} and {reader.path}")
            owner[video_id] = reader
    unchanged = _same_merge(out, readers, partial)
    if unchanged is not None:
        return unchanged
    if out.exists() and not force:
        raise UsageError(f"{out}: exists (merged from other inputs); use --force to replace it")
    done = set(owner)
    failed = sorted(
        {
            record["video"]: record
            for reader in readers
            for record in reader.attrs.get("failed", [])
            if record["video"] not in done
        }.values(),
        key=lambda record: record["video"],
    )

    def items():
        for video_id in sorted(owner):
            reader = owner[video_id]
            attrs = dict(reader.video_attrs(video_id))
            attrs.pop("digest", None)
            attrs.pop("array_digests", None)
            yield video_id, reader.read(video_id), attrs

    provenance = dict(
        first.provenance,
        shard=None,
        merged_from=[str(reader.path) for reader in readers],
        merged_inputs=_inputs(readers),
    )
    skip = {"schema_version", "kind", "hoitool_version", "fingerprint", "num_videos", "failed", "provenance", "partial"}
    base = {key: value for key, value in first.attrs.items() if key not in skip}
    base.update(provenance=provenance, failed=failed)
    if partial:
        base["partial"] = partial
    backend = backend_name(out)
    if all(is_segmented(reader.path) and backend_name(reader.path) == backend for reader in readers):
        meta = _link_merge(readers, out, backend, base)
    else:  # schema-1 inputs or another backend: the videos are copied (checked reads)
        with contextlib.ExitStack() as stack:
            for reader in readers:
                stack.callback(reader.close)
            meta = write_store(out, first.kind, items(), base)
    write_failures(sidecar(out, "failures.jsonl"), failed)
    return meta


def _link_merge(readers: list, out: Path, backend: str, base: dict) -> dict:
    """The merged store is an index over the shards' segments, hard-linked into it: no array data is written."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    remove_path(tmp)
    try:
        sources = [(reader.path / SEGMENTS, read_index(reader.path)["segments"]) for reader in readers]
        names = link_segments(sources, tmp)
        meta = write_index(tmp, readers[0].kind, backend, names, base)
        fsync_tree(tmp)
    except BaseException:
        remove_path(tmp)
        raise
    swap_in(tmp, out)
    return meta


def compact_store(path: Path) -> dict:
    """Rewrite a store into one segment per array signature (and a schema-1 store into schema 2), crash-safely.

    The new segment is written beside the old ones and the index then switched to it, so a
    crash leaves either the old index (the new segment is an orphan, removed by the next
    writer) or the new one (the old segments are the orphans). Every video is checked on read.
    """
    path = Path(path)
    reader = open_store(path)
    check_ours(path, reader.kind)
    lock = writer_lock(path)
    try:
        clean_temporaries(path)
        reader = open_store(path)  # again, under the lock
        skip = {"schema_version", "hoitool_version", "fingerprint", "num_videos", "num_segments", "codec", "kind"}
        base = {key: value for key, value in reader.attrs.items() if key not in skip}
        ids = reader.video_ids
        items = items_of(ids, lambda video_id: (reader.read(video_id), reader.video_attrs(video_id)))
        if not is_segmented(path):
            return write_store(path, reader.kind, items, base)
        root, backend = path, backend_name(path)
        names, _ = write_segments(root / SEGMENTS, backend, reader.kind, items, next_seq(root / SEGMENTS), len(ids))
        reader.close()
        meta = write_index(root, reader.kind, backend, names, base)
        clean_orphans(root)
        return meta
    finally:
        release(lock)
