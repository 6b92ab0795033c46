"""``cache info``, ``cache verify`` and ``cache merge`` as library functions."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from hoitool.errors import UsageError
from hoitool.store.fingerprint import store_fingerprint, video_digest
from hoitool.store.reader import open_store
from hoitool.store.schema import ARRAYS, OPTIONAL_ARRAYS
from hoitool.store.staging import sidecar, write_failures, write_store


def disk_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def store_info(path: Path) -> dict:
    """What a user wants to know about a store without opening Python."""
    reader = open_store(path)
    shapes: dict[str, list] = {}
    dtypes: dict[str, str] = {}
    raw_bytes = 0
    for video_id in reader.video_ids:
        for name, array in reader.read(video_id).items():
            shapes.setdefault(name, [])
            shape = list(array.shape)
            if shape not in shapes[name]:
                shapes[name].append(shape)
            dtypes[name] = str(array.dtype)
            raw_bytes += array.nbytes
    parts = Path(path).with_name(Path(path).name + ".parts")
    on_disk = disk_bytes(path)
    return {
        "path": str(path),
        "kind": reader.kind,
        "schema_version": reader.attrs["schema_version"],
        "fingerprint": reader.fingerprint,
        "videos_done": len(reader.video_ids),
        "videos_failed": len(reader.attrs.get("failed", [])),
        "failed": reader.attrs.get("failed", []),
        "unfinished_parts": len(list(parts.glob("*.npz"))) if parts.exists() else 0,
        "shapes": {name: value[:3] for name, value in shapes.items()},
        "dtypes": dtypes,
        "bytes_on_disk": on_disk,
        "bytes_uncompressed": raw_bytes,
        "compression_ratio": raw_bytes / on_disk if on_disk else None,
        "provenance": reader.provenance,
        **{key: reader.attrs.get(key) for key in ("views", "num_frames", "max_boxes", "dim", "frames", "clips", "source")
           if key in reader.attrs},
    }


def verify_store(path: Path) -> list[str]:
    """Every video readable, finite, consistent with the schema and its digest; returns problems found."""
    reader = open_store(path)
    kind = reader.kind
    problems: list[str] = []
    digests: dict[str, str] = {}
    expected = {**ARRAYS[kind], **OPTIONAL_ARRAYS.get(kind, {})}
    for video_id in reader.video_ids:
        where = f"{path}: video {video_id!r}"
        try:
            arrays = reader.read(video_id)
            attrs = reader.video_attrs(video_id)
        except Exception as exc:  # any read error is a finding, not a crash
            problems.append(f"{where}: unreadable ({type(exc).__name__}: {exc})")
            continue
        missing = set(ARRAYS[kind]) - set(arrays)
        if missing:
            problems.append(f"{where}: missing arrays {sorted(missing)}")
            continue
        for name, array in arrays.items():
            dtype, ndim = expected.get(name, (None, None))
            if dtype is None:
                problems.append(f"{where}: unexpected array {name!r}")
            elif str(array.dtype) != dtype or array.ndim != ndim:
                problems.append(f"{where}: {name} is {array.dtype} with {array.ndim} dims, expected {dtype} with {ndim}")
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
        if attrs.get("digest") != digest:
            problems.append(f"{where}: content does not match its recorded digest (modified after writing)")
    if not problems and store_fingerprint(kind, digests) != reader.fingerprint:
        problems.append(f"{path}: store fingerprint does not match its videos")
    return problems


def merge_stores(shards: list[Path], out: Path, force: bool = False) -> dict:
    """Merge shard stores (same kind, config and upstream) into one store equal to a single run."""
    if not shards:
        raise UsageError("cache merge: no input stores given")
    if Path(out).exists() and not force:
        raise UsageError(f"{out}: exists; use --force to replace it")
    readers = [open_store(path) for path in shards]
    first = readers[0]
    for reader in readers[1:]:
        if reader.kind != first.kind:
            raise UsageError(f"{reader.path}: is a {reader.kind} store, {first.path} is a {first.kind} store")
        if reader.attrs.get("header") != first.attrs.get("header"):
            raise UsageError(f"{reader.path}: made with a different config or upstream than {first.path}; cannot merge")
    owner: dict[str, object] = {}
    for reader in readers:
        for video_id in reader.video_ids:
            if video_id in owner:
                raise UsageError(f"video {video_id!r} is in both {owner[video_id].path} and {reader.path}")
            owner[video_id] = reader
    done = set(owner)
    failed = sorted(
        {record["video"]: record for reader in readers for record in reader.attrs.get("failed", [])
         if record["video"] not in done}.values(),
        key=lambda record: record["video"],
    )

    def items():
        for video_id in sorted(owner):
            reader = owner[video_id]
            attrs = dict(reader.video_attrs(video_id))
            attrs.pop("digest", None)
            yield video_id, reader.read(video_id), attrs

    provenance = dict(first.provenance, shard=None, merged_from=[str(path) for path in shards])
    skip = {"schema_version", "kind", "hoitool_version", "fingerprint", "num_videos", "failed", "provenance"}
    base = {key: value for key, value in first.attrs.items() if key not in skip}
    base.update(provenance=provenance, failed=failed)
    with contextlib.ExitStack() as stack:
        for reader in readers:
            stack.callback(reader.close)
        meta = write_store(Path(out), first.kind, items(), base)
    write_failures(sidecar(Path(out), "failures.jsonl"), failed)
    return meta
