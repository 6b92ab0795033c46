"""Resumable, crash-safe, shardable construction of a store.

Protocol (docs/cache-format.md):

* finished videos are staged as one ``.npz`` each in ``<store>.parts/`` — written to a
  temporary name, fsynced and renamed, so a part under its final name is complete;
* a run killed at any instant leaves only complete parts; the next run skips them;
* when every video is done or failed, the new videos are committed as a new immutable
  segment of the store and its index is replaced atomically (``hoitool.store.segments``):
  the cost is what is new; the content and fingerprint are identical whether or not the
  run was interrupted;
* the header (content config + upstream fingerprint) must match to resume; ``--force``
  discards mismatched work instead.
"""

from __future__ import annotations

import io
import json
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hoitool.errors import StaleArtifactError, UsageError
from hoitool.io.atomic import (
    append_jsonl,
    atomic_path,
    fsync_dir,
    read_jsonl,
    write_json,
    write_text,
)
from hoitool.io.lock import exclusive_lock, release
from hoitool.resume import Decision, Place, Record, Request, decide
from hoitool.store.backends import backend_name, open_backend
from hoitool.store.ownership import check_ours, remove_parts, remove_store
from hoitool.store.reader import checked_read
from hoitool.store.schema import check_arrays, video_id_from_key, video_key
from hoitool.store.segments import (
    SegmentedBackend,
    clean_orphans,
    commit,
    finished_segments,
    is_segmented,
    items_of,
    next_seq,
    raw_bytes,
    remove_path,
    remove_unfinished_segments,
    segment_ids,
    segment_items,
    write_segments,
)

ATTRS_KEY = "__attrs__"
# Staged parts (uncompressed .npz) beyond max(64 MiB, 5% of the raw bytes already in segments, 4% of the raw bytes
# the store will hold when this run ends) become one compressed segment during the run. Parts then never exceed
# about 4-5% of the final raw size, so the disk a build needs stays below about 1 + 0.04 (c + 1) ~ 1.13x the final
# store (parts + the segment being written, c ~ 2.3 the compression ratio). The projection (a run that says how many videos it will stage, as extraction
# does) makes the segments of a fresh build a few percent of the store each, about 25 at any scale; the geometric
# rule alone gave ~110 for Something-Something v2, 0.01 Zarr files per video (docs/cache-format.md, bench/store.py).
CHECKPOINT_MIN_BYTES = 64 << 20
CHECKPOINT_FRACTION = 0.05
CHECKPOINT_PROJECTED_FRACTION = 0.04
CHECKPOINT_ENV = "HOITOOL_CHECKPOINT_BYTES"  # a fixed size instead (tests that kill a run inside a checkpoint)


def _checkpoint_override() -> int | None:
    value = os.environ.get(CHECKPOINT_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{CHECKPOINT_ENV}={value!r}: expected a number of bytes (at least 1)")
    return int(value)


def sidecar(path: Path, name: str) -> Path:
    """Files that live beside a store: ``<store>.failures.jsonl``, ``<store>.config.yaml``."""
    return path.with_name(f"{path.name}.{name}")


def shard_path(path: Path, shard: tuple[int, int] | None) -> Path:
    """``feats.h5`` + shard (0, 4) -> ``feats.shard0-of-4.h5``."""
    if shard is None:
        return path
    index, count = shard
    return path.with_name(f"{path.stem}.shard{index}-of-{count}{path.suffix}")


class StagedStore:
    """Build ``path`` video by video; see the module docstring for the protocol."""

    def __init__(self, path: Path | str, kind: str, header: dict, force: bool = False, what: str = "output"):
        self.path = Path(path)
        self.checkpoint_bytes: int | None = _checkpoint_override()  # None: adaptive (above); a number: fixed
        self.kind = kind
        self.header = header  # {"config": content config, "upstream": fingerprint or None, ...}
        self.parts = self.path.with_name(self.path.name + ".parts")
        backend_name(self.path)  # validate the suffix early
        what = f"{kind} store" if what == "output" else what
        check_ours(self.path, kind, what)  # before anything is created: never touch what hoitool did not write
        self._lock = writer_lock(self.path)
        self._pending_bytes = 0
        self._segment_bytes = 0  # raw bytes in the store's and this run's segments (see _threshold)
        self._start_bytes = 0  # raw bytes of what was done before this run (store, checkpoints, parts)
        self._expected = 0  # videos this run says it will stage (writer(expected=...)); 0: unknown
        self._run_videos = self._run_bytes = 0  # staged by this run: count, raw bytes
        self._store = None  # the existing store, opened once (see _existing)
        try:
            clean_temporaries(self.path)
            self._drop_parts_in_segments()
            self._check_existing(force, what)
        except BaseException:  # refused (stale, damaged, interrupted): release the lock now, not at garbage collection
            self.close()
            raise

    # -- start-up ------------------------------------------------------------

    def _check_existing(self, force: bool, what: str) -> None:
        previous = []
        if self.path.exists():
            backend = open_backend(self.path, "r")
            try:
                meta = backend.read_meta()
            finally:
                backend.close()
            previous.append((self.path, meta.get("header", {})))
        header_file = self.parts / "header.json"
        if header_file.exists():
            previous.append((self.parts, json.loads(header_file.read_text())))
        asked = Request(self.header.get("config"), {"upstream artifact": self.header.get("upstream")}, force=force)
        for location, header in previous:  # force replaces only work that does not match (redo=False)
            place = Place(location, what, redo=False, refusal=StaleArtifactError)
            recorded = Record(
                header.get("config"), {"upstream artifact": header.get("upstream")}, missing="none in its header"
            )
            if decide(place, recorded, asked) is Decision.REPLACE:
                self.discard()
                return

    def _drop_parts_in_segments(self) -> None:
        """Parts that a finished checkpoint segment already holds (a run killed right after a checkpoint)."""
        in_segments = self.segment_ids()
        for video_id in self.staged_ids() & in_segments:
            self._part(video_id).unlink()
        self._pending_bytes = sum(part.stat().st_size for part in self.parts.glob("*.npz"))
        store = self._existing() if is_segmented(self.path) else None
        self._segment_bytes = store.raw_bytes() if store else 0
        self._segment_bytes += raw_bytes(finished_segments(self.parts), self.parts)
        self._start_bytes = self._segment_bytes + self._pending_bytes

    def _threshold(self) -> int:
        if self.checkpoint_bytes is not None:
            return self.checkpoint_bytes
        projected = self._start_bytes  # the raw size of the store when this run has staged what it expects
        if self._run_videos:
            projected += max(self._expected, self._run_videos) * self._run_bytes // self._run_videos
        return max(
            CHECKPOINT_MIN_BYTES,
            int(CHECKPOINT_FRACTION * self._segment_bytes),
            int(CHECKPOINT_PROJECTED_FRACTION * projected),
        )

    def discard(self) -> None:
        """Remove the store and its staged parts (``--force``; both were checked to be hoitool's own)."""
        self._forget()
        remove_store(self.path)
        remove_parts(self.parts)

    # -- progress state --------------------------------------------------------
    def _part(self, video_id: str) -> Path:
        return self.parts / f"{video_key(video_id)}.npz"

    def staged_ids(self) -> set[str]:
        """Videos staged as ``.npz`` parts (not yet in a checkpoint segment)."""
        return {video_id_from_key(part.stem) for part in self.parts.glob("*.npz")}

    def segment_ids(self) -> set[str]:
        """Videos in this run's checkpoint segments (``<store>.parts/seg-*``), not yet in the index."""
        return {video_id for name in finished_segments(self.parts) for video_id in segment_ids(self.parts, name)}

    def _existing(self):
        """The store as it is at ``path`` (None when there is none), read once: we hold its only writer lock."""
        if self._store is None and self.path.exists():
            self._store = open_backend(self.path, "r")
        return self._store

    def final_ids(self) -> set[str]:
        store = self._existing()
        return {video_id_from_key(key) for key in store.video_keys()} if store else set()

    def done_ids(self) -> set[str]:
        return self.staged_ids() | self.segment_ids() | self.final_ids()

    # -- writing ---------------------------------------------------------------
    def _ensure_parts(self) -> None:
        """Create the staging folder (with the header that guards resuming) on first use."""
        header_file = self.parts / "header.json"
        if not header_file.exists():
            self.parts.mkdir(parents=True, exist_ok=True)
            write_json(header_file, {**self.header, "kind": self.kind})  # "kind": the folder is hoitool's

    def save(self, video_id: str, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
        """Stage one finished video durably (atomic npz)."""
        arrays = check_arrays(self.kind, arrays)
        self._ensure_parts()
        payload = dict(arrays)
        payload[ATTRS_KEY] = np.frombuffer(json.dumps(attrs or {}, sort_keys=True).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, allow_pickle=False, **payload)  # schema dtypes are numeric; parts load without pickle
        with atomic_path(self._part(video_id)) as tmp:
            tmp.write_bytes(buffer.getvalue())
        self._pending_bytes += buffer.tell()
        self._run_videos += 1
        self._run_bytes += sum(array.nbytes for array in arrays.values())
        if self._pending_bytes >= self._threshold():
            self.checkpoint()

    def checkpoint(self) -> None:
        """Turn the staged parts into one compressed segment in ``<store>.parts/``, then drop those parts.

        This bounds the disk a long run needs: uncompressed parts never exceed ``_threshold()``
        (the store grows by compressed segments instead). The segment is complete before any
        part goes, and a part that is also in a finished segment is dropped at the next start.
        """
        ids = sorted(self.staged_ids() - self.segment_ids())
        if ids:
            items = items_of(ids, lambda video_id: load_part(self._part(video_id)))
            folder = self.parts
            write_segments(folder, backend_name(self.path), self.kind, items, next_seq(folder), len(ids))
            for video_id in ids:
                self._part(video_id).unlink()
            self._segment_bytes += self._pending_bytes
        self._pending_bytes = 0

    def fail(self, video_id: str, error: str) -> None:
        self._ensure_parts()
        append_jsonl(self.parts / "failures.jsonl", {"video": video_id, "error": error})

    @contextmanager
    def writer(self, max_pending: int = 8, expected: int = 0) -> Iterator[Callable]:
        """A background writer so the model never waits on disk: ``write(video_id, arrays, attrs)``.

        ``expected``: how many videos this run will stage (at most), so checkpoint segments can be sized
        to the final store (a few percent of it each) instead of growing from 64 MiB.
        """
        self._expected = max(0, expected)
        pending: queue.Queue = queue.Queue(maxsize=max_pending)
        errors: list[BaseException] = []

        def work() -> None:
            while True:
                item = pending.get()
                if item is None:
                    return
                if not errors:
                    try:
                        self.save(*item)
                    except BaseException as exc:  # surfaced in the main thread below
                        errors.append(exc)

        thread = threading.Thread(target=work, name="hoitool-writer", daemon=True)
        thread.start()

        def write(video_id: str, arrays: dict, attrs: dict | None = None) -> None:
            if errors:
                raise errors[0]
            pending.put((video_id, arrays, attrs))

        try:
            yield write
        finally:
            pending.put(None)
            thread.join()
        if errors:
            raise errors[0]

    # -- finishing -------------------------------------------------------------
    def failures(self) -> list[dict]:
        """Latest failure per video that is still not done."""
        done = self.done_ids()
        latest: dict[str, dict] = {}
        for record in read_jsonl(self.parts / "failures.jsonl"):
            latest[record["video"]] = record
        store = self._existing()
        for record in store.read_meta().get("failed", []) if store else []:
            latest.setdefault(record["video"], record)
        return [latest[key] for key in sorted(latest) if key not in done]

    def finalize(self, provenance: dict, extra_meta: dict | None = None) -> dict:
        """Commit the staged videos as a new segment and rewrite the index: costs what is new, not what exists.

        A schema-1 store (one HDF5 file / Zarr group) is rewritten once into the segmented layout.
        """
        failures = self.failures()
        base = {"header": self.header, "provenance": provenance, "failed": failures, **(extra_meta or {})}
        old = self._existing()
        try:
            old_ids = {video_id_from_key(key) for key in old.video_keys()} if old else set()
            staged = [name for name in finished_segments(self.parts) if not self._committed(name, old_ids)]
            in_staged = self.segment_ids()
            new_ids = sorted(self.staged_ids() - old_ids - in_staged)  # in the index already: a crash after a commit
            parts = items_of(new_ids, lambda video_id: load_part(self._part(video_id)))
            if old is None or isinstance(old, SegmentedBackend):
                keep = old.segments if old else []
                backend = backend_name(self.path)
                known = old.digests() if old else None
                meta = commit(
                    self.path, backend, self.kind, parts, len(new_ids), base, keep, [(self.parts, staged)], known
                )
            else:  # schema 1: checked, so a damaged video is never re-digested into a "valid" one
                legacy = items_of(sorted(old_ids), lambda video_id: checked_read(old, self.path, self.kind, video_id))
                segments = [items_of_segment(self.parts, name) for name in staged]
                meta = write_store(self.path, self.kind, _merged_in_order(legacy, parts, *segments), base)
        finally:
            self._forget()
        write_failures(sidecar(self.path, "failures.jsonl"), failures)
        remove_parts(self.parts)
        self.close()
        return meta

    def _committed(self, name: str, old_ids: set[str]) -> bool:
        """A checkpoint segment whose videos the index already lists (a crash after the commit, before cleanup)."""
        videos = segment_ids(self.parts, name)
        return bool(videos) and all(video_id in old_ids for video_id in videos)

    def _forget(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def close(self) -> None:
        """Release the writer lock (also released when the process ends, however it ends)."""
        self._forget()
        if self._lock is not None:
            release(self._lock)  # LOCK_UN: free even if a DataLoader worker still shares the file for a moment
            self._lock = None


def write_store(path: Path, kind: str, items: Iterable[tuple[str, dict, dict]], base_meta: dict) -> dict:
    """Write ``(video_id, arrays, attrs)`` items to a whole new store that replaces ``path`` only when complete.

    Used where every video is rewritten (a schema-1 store, a merge of schema-1 shards, ``cache compact``
    of a schema-1 store); the store is built in a temporary folder and swapped in (``swap_in``).
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    remove_path(tmp)
    try:
        meta = commit(tmp, backend_name(path), kind, items, 1024, base_meta)
    except BaseException:  # a full disk or an error: the old store stays, the half-written copy goes
        remove_path(tmp)
        raise
    swap_in(tmp, path)
    return meta


def swap_in(tmp: Path, path: Path) -> None:
    """Move a finished store folder into place; the old store (file or folder) goes to ``<store>.old`` for a moment.

    A crash between the two renames leaves ``<store>.old`` and no store: :func:`recover_old` puts it back.
    """
    old = path.with_name(path.name + ".old")
    remove_path(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    remove_path(old)


def recover_old(path: Path) -> None:
    """Finish an interrupted :func:`swap_in`: restore ``<store>.old`` if the store is missing, else drop it."""
    old = path.with_name(path.name + ".old")
    if old.exists():
        if path.exists():
            remove_path(old)
        else:
            os.replace(old, path)


def items_of_segment(folder: Path, name: str):
    """A checkpoint segment's videos in id order (a segment is written in id order)."""
    return segment_items(folder, name)


def _merged_in_order(*streams):
    """Items of several id-sorted streams, in id order (disjoint ids)."""
    import heapq

    return heapq.merge(*streams, key=lambda item: item[0])


def clean_temporaries(path: Path) -> None:
    """Remove what a killed writer of ``path`` left: its ``.<name>.*.tmp`` files and a half-swapped Zarr folder.

    Call it only while holding the store's lock: then no live process owns any of them.
    """
    recover_old(path)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        remove_path(leftover)
    clean_orphans(path)
    parts = path.with_name(path.name + ".parts")
    if parts.is_dir():
        for leftover in parts.glob(".*.tmp"):
            remove_path(leftover)
        remove_unfinished_segments(parts)


def writer_lock(path: Path):
    """One writer per store: a second process on the same output is refused, not interleaved.

    The short grace covers a DataLoader worker forked an instant before its parent was killed:
    it dies (with its parent) before it can have done anything, but still holds the lock a moment.
    """
    return exclusive_lock(
        path.with_name(f".{path.name}.lock"),
        f"{path}: another process is writing this store (use --shard i/n for parallel jobs)",
        grace_s=3.0,
    )


def write_failures(path: Path, failures: list[dict]) -> None:
    if failures:
        write_text(path, "".join(json.dumps(record, sort_keys=True) + "\n" for record in failures))
    elif path.exists():
        path.unlink()


def load_part(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files if name != ATTRS_KEY}
        attrs = json.loads(bytes(data[ATTRS_KEY]).decode()) if ATTRS_KEY in data.files else {}
    return arrays, attrs
