"""Resumable, crash-safe, shardable construction of a store.

Protocol (docs/cache-format.md):

* finished videos are staged as one ``.npz`` each in ``<store>.parts/`` — written to a
  temporary name, fsynced and renamed, so a part under its final name is complete;
* a run killed at any instant leaves only complete parts; the next run skips them;
* when every video is done or failed, the final store is built from the old store (if any)
  and the parts, in id order, under a temporary name and renamed into place — so the
  result is identical whether or not the run was interrupted;
* the header (content config + upstream fingerprint) must match to resume; ``--force``
  discards mismatched work instead.
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from hoitool import __version__
from hoitool.config import changed_keys
from hoitool.errors import StaleArtifactError
from hoitool.io.atomic import (
    append_jsonl,
    atomic_path,
    fsync_dir,
    read_jsonl,
    recover_dir,
    replace_dir,
    write_json,
    write_text,
)
from hoitool.io.lock import exclusive_lock, release
from hoitool.store.backends import backend_name, open_backend
from hoitool.store.fingerprint import array_digests, store_fingerprint, video_digest
from hoitool.store.ownership import check_ours, remove_parts, remove_store
from hoitool.store.reader import checked_read
from hoitool.store.schema import SCHEMA_VERSION, check_arrays, video_id_from_key, video_key

ATTRS_KEY = "__attrs__"


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
        self.kind = kind
        self.header = header  # {"config": content config, "upstream": fingerprint or None, ...}
        self.parts = self.path.with_name(self.path.name + ".parts")
        backend_name(self.path)  # validate the suffix early
        what = f"{kind} store" if what == "output" else what
        check_ours(self.path, kind, what)  # before anything is created: never touch what hoitool did not write
        self._lock = writer_lock(self.path)
        try:
            clean_temporaries(self.path)
            self._check_existing(force, what)
        except BaseException:  # refused (stale, damaged, interrupted): release the lock now, not at garbage collection
            self.close()
            raise

    # -- start-up ------------------------------------------------------------

    def _mismatch(self, other: dict) -> str | None:
        if other.get("upstream") != self.header.get("upstream"):
            return (
                f"its upstream artifact changed (fingerprint {other.get('upstream')} -> {self.header.get('upstream')})"
            )
        if other.get("config") != self.header.get("config"):
            changed = changed_keys(other.get("config", {}), self.header.get("config", {}))
            return f"it was made with a different config ({', '.join(changed[:5]) or 'schema'})"
        return None

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
        for location, header in previous:
            reason = self._mismatch(header)
            if reason is None:
                continue
            if not force:
                raise StaleArtifactError(
                    f"{location}: refusing to resume the {what}: {reason}; use --force to start over"
                )
            self.discard()
            return

    def discard(self) -> None:
        """Remove the store and its staged parts (``--force``; both were checked to be hoitool's own)."""
        remove_store(self.path)
        remove_parts(self.parts)

    # -- progress state --------------------------------------------------------
    def _part(self, video_id: str) -> Path:
        return self.parts / f"{video_key(video_id)}.npz"

    def staged_ids(self) -> set[str]:
        return {video_id_from_key(part.stem) for part in self.parts.glob("*.npz")}

    def final_ids(self) -> set[str]:
        if not self.path.exists():
            return set()
        backend = open_backend(self.path, "r")
        try:
            return {video_id_from_key(key) for key in backend.video_keys()}
        finally:
            backend.close()

    def done_ids(self) -> set[str]:
        return self.staged_ids() | self.final_ids()

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

    def fail(self, video_id: str, error: str) -> None:
        self._ensure_parts()
        append_jsonl(self.parts / "failures.jsonl", {"video": video_id, "error": error})

    @contextmanager
    def writer(self, max_pending: int = 8) -> Iterator[Callable]:
        """A background writer so the model never waits on disk: ``write(video_id, arrays, attrs)``."""
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
        if self.path.exists():
            backend = open_backend(self.path, "r")
            try:
                for record in backend.read_meta().get("failed", []):
                    latest.setdefault(record["video"], record)
            finally:
                backend.close()
        return [latest[key] for key in sorted(latest) if key not in done]

    def finalize(self, provenance: dict, extra_meta: dict | None = None) -> dict:
        """Build the final store from the old store and the parts, then move it into place."""
        failures = self.failures()
        staged = self.staged_ids()
        old = open_backend(self.path, "r") if self.path.exists() else None
        try:
            old_ids = {video_id_from_key(key) for key in old.video_keys()} if old else set()

            def items():
                for video_id in sorted(staged | old_ids):
                    if video_id in staged:
                        yield (video_id, *load_part(self._part(video_id)))
                    else:  # checked: a damaged video must not be re-digested into a "valid" one
                        yield video_id, *checked_read(old, self.path, self.kind, video_id)

            base = {"header": self.header, "provenance": provenance, "failed": failures, **(extra_meta or {})}
            meta = write_store(self.path, self.kind, items(), base)
        finally:
            if old:
                old.close()
        write_failures(sidecar(self.path, "failures.jsonl"), failures)
        remove_parts(self.parts)
        self.close()
        return meta

    def close(self) -> None:
        """Release the writer lock (also released when the process ends, however it ends)."""
        if self._lock is not None:
            release(self._lock)  # LOCK_UN: free even if a DataLoader worker still shares the file for a moment
            self._lock = None


def write_store(path: Path, kind: str, items: Iterable[tuple[str, dict, dict]], base_meta: dict) -> dict:
    """Write ``(video_id, arrays, attrs)`` items (in id order) to a new store that replaces ``path`` only when complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        meta = _write_tmp(tmp, backend_name(path), kind, items, base_meta)
        if tmp.is_dir():  # Zarr: sync every file, then swap the directory
            for file in tmp.rglob("*"):
                if file.is_file():
                    fsync_file(file)
    except BaseException:  # a full disk or an error: the old store stays, the half-written copy goes
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    if tmp.is_dir():
        replace_dir(tmp, path)
    else:
        os.replace(tmp, path)
        fsync_dir(path.parent)
    return meta


def _write_tmp(tmp: Path, backend: str, kind: str, items: Iterable[tuple[str, dict, dict]], base_meta: dict) -> dict:
    """Every video with its digests (whole video: the fingerprint; per array: checked reads), then the root metadata."""
    out = open_backend(tmp, "w", backend)
    digests: dict[str, str] = {}
    try:
        for video_id, arrays, attrs in items:
            attrs = dict(attrs, digest=video_digest(arrays), array_digests=array_digests(arrays))
            digests[video_id] = attrs["digest"]
            out.write_video(video_key(video_id), arrays, attrs)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "kind": kind,
            "hoitool_version": __version__,
            **base_meta,
            "fingerprint": store_fingerprint(kind, digests),
            "num_videos": len(digests),
        }
        out.write_meta(meta)
    finally:
        out.close()
    if not tmp.is_dir():
        fsync_file(tmp)
    return meta


def clean_temporaries(path: Path) -> None:
    """Remove what a killed writer of ``path`` left: its ``.<name>.*.tmp`` files and a half-swapped Zarr folder.

    Call it only while holding the store's lock: then no live process owns any of them.
    """
    if backend_name(path) == "zarr":
        recover_dir(path)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
    parts = path.with_name(path.name + ".parts")
    if parts.is_dir():
        for leftover in parts.glob(".*.tmp"):
            leftover.unlink()


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


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


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
