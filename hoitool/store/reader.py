"""Read-only access to a finished store; lazy and picklable so each DataLoader worker opens its own handle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hoitool import log
from hoitool.errors import HoitoolError, UsageError
from hoitool.store.backends import open_backend
from hoitool.store.fingerprint import array_digests, video_digest
from hoitool.store.schema import ARRAYS, READABLE_SCHEMAS, SCHEMA_VERSION, video_id_from_key, video_key
from hoitool.store.segments import SegmentedBackend


class DamagedStoreError(HoitoolError):
    """A video whose arrays are missing, unreadable or differ from their recorded digest: never read as data."""

    def __init__(self, message: str):
        super().__init__(_one_line(message))


def _one_line(message: str) -> str:
    """The original message when a DataLoader worker re-raises this error with its whole traceback around it."""
    if "Original Traceback" in message:
        last = [line for line in message.splitlines() if line.strip()][-1]
        return last.split(f"{DamagedStoreError.__name__}: ", 1)[-1]
    return message


def damaged(path: Path, video_id: str, problem: str) -> DamagedStoreError:
    return DamagedStoreError(f"{path}: video {video_id!r} is damaged ({problem}); run `hoitool cache verify {path}`")


def checked_read(
    backend, path: Path, kind: str, video_id: str, names: list[str] | None = None, verified: set | None = None
) -> tuple[dict, dict]:
    """``(arrays, video attrs)`` of one video, after checking every array is there and equals its recorded digest.

    Stores record one digest per array, so reading some arrays hashes only those; a store
    without them is checked against the whole-video digest (all arrays are read then).
    A deleted Zarr chunk reads back as the fill value, so the digest is what catches it.
    ``verified`` holds the ``(video_id, array)`` pairs already hashed by this process: they
    are read (so a missing array still fails) but not hashed again.
    """
    key = video_key(video_id)
    try:
        attrs, read = backend.open_video(key)
    except KeyError:
        raise UsageError(f"{path}: no video {video_id!r} in this store") from None
    except Exception as exc:
        raise damaged(path, video_id, f"unreadable attributes: {_first_line(exc)}") from None
    recorded = attrs.get("array_digests")
    wanted = list(names) if names else None
    to_read = (wanted or sorted(recorded)) if recorded else None  # old stores: every array, for the video digest
    absent = [name for name in wanted or [] if recorded and name not in recorded]
    if absent:
        raise UsageError(f"{path}: video {video_id!r} has no array {absent[0]!r} (it was not extracted)")
    try:
        arrays = read(to_read)
    except KeyError as exc:
        raise damaged(path, video_id, _missing(backend, key, to_read, exc)) from None
    except Exception as exc:  # h5py OSError, Zarr decode errors, ...
        raise damaged(path, video_id, f"unreadable: {_first_line(exc)}") from None
    verified = set() if verified is None else verified
    if recorded:
        unknown = sorted(set(arrays) - set(recorded))
        if unknown:
            raise damaged(path, video_id, f"no recorded digest for array {unknown[0]!r}")
        fresh = {name: array for name, array in arrays.items() if (video_id, name) not in verified}
        actual = array_digests(fresh)
        bad = [name for name in sorted(fresh) if actual[name] != recorded[name]]
        if bad:
            raise damaged(path, video_id, f"{bad[0]} does not match its recorded digest")
        verified.update((video_id, name) for name in fresh)
    else:
        missing = sorted(set(ARRAYS[kind]) - set(arrays))
        if missing:
            raise damaged(path, video_id, f"array {missing[0]!r} missing")
        if (video_id, "*") not in verified:
            if attrs.get("digest") != video_digest(arrays):
                raise damaged(path, video_id, "content does not match its recorded digest")
            verified.add((video_id, "*"))
        if wanted:
            arrays = {name: arrays[name] for name in wanted}
    return arrays, attrs


def _missing(backend, key: str, wanted: list[str] | None, exc: KeyError) -> str:
    try:
        present = set(backend.array_names(key))
    except Exception:
        return f"an array is missing: {_first_line(exc)}"
    missing = sorted(set(wanted or []) - present)
    return f"array {missing[0]!r} missing" if missing else f"an array is missing: {_first_line(exc)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().strip("'\"")
    return text.splitlines()[0] if text else type(exc).__name__


class StoreReader:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        backend = open_backend(self.path, "r")
        try:
            self.attrs = backend.read_meta()
            keys = backend.video_keys()
            if isinstance(backend, SegmentedBackend):
                backend.open_segments()
        except Exception as exc:  # a truncated or overwritten file: h5py raises RuntimeError, OSError, ...
            backend.close()
            raise UsageError(f"{self.path}: cannot read the store ({_first_line(exc)}); is the file damaged?") from None
        if not isinstance(self.attrs, dict) or not self.attrs or "kind" not in self.attrs:
            raise UsageError(
                f"{self.path}: not a hoitool store (no metadata; an unfinished run leaves only a .parts folder)"
            )
        if self.attrs.get("schema_version") not in READABLE_SCHEMAS:
            raise UsageError(
                f"{self.path}: store schema {self.attrs.get('schema_version')} is not supported "
                f"(this hoitool reads {', '.join(map(str, READABLE_SCHEMAS))}, writes {SCHEMA_VERSION})"
            )
        self.video_ids = sorted(video_id_from_key(key) for key in keys)
        self._backend = backend  # kept for this process (a big index is parsed once); a fork opens its own
        self._pid = os.getpid()
        self._verified: set[tuple[str, str]] = set()
        if self.partial:
            warn_partial(self.path, self.partial)

    @property
    def partial(self) -> dict | None:
        """What a ``cache merge --allow-partial`` left out (None for a complete store)."""
        return self.attrs.get("partial")

    @property
    def kind(self) -> str:
        return self.attrs["kind"]

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

    @property
    def provenance(self) -> dict:
        return self.attrs.get("provenance", {})

    @property
    def manifest_path(self) -> str:
        return self.provenance.get("manifest", "")

    def _open(self):
        if self._backend is None or self._pid != os.getpid():
            self._backend = open_backend(self.path, "r")
            self._pid = os.getpid()
            self._verified = set()  # per process: a forked worker hashes what it reads itself
        return self._backend

    def read(self, video_id: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        """The video's arrays (``names``: only those), checked against their recorded digests.

        Each array is hashed the first time this process reads it (later epochs only check
        it is there): docs/cache-format.md gives the measured cost.
        """
        return checked_read(self._open(), self.path, self.kind, video_id, names, self._verified)[0]

    def read_unchecked(self, video_id: str) -> dict[str, np.ndarray]:
        """Whatever the video's group holds, as stored (``cache verify`` and ``cache info`` report on it)."""
        return self._open().read_video(video_key(video_id), None)

    def video_attrs(self, video_id: str) -> dict:
        return self._open().video_attrs(video_key(video_id))

    def close(self) -> None:
        if self._backend is not None and self._pid == os.getpid():
            self._backend.close()
        self._backend = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_backend"] = None
        state["_pid"] = None
        state["_verified"] = set()
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self.video_ids)


_warned: set[str] = set()


def warn_partial(path: Path, partial: dict) -> None:
    """Say once per process and store that it lacks shards: every stage that opens it gets the warning."""
    if str(path) in _warned:
        return
    _warned.add(str(path))
    log.warning(
        f"{path} is a partial store ({describe_partial(partial)}); results from it do not cover the whole dataset"
    )


def describe_partial(partial: dict) -> str:
    missing = partial.get("missing_shards") or []
    text = f"merged with --allow-partial from {len(partial.get('shards') or [])} shard store(s)"
    if missing:
        text += f"; missing shards {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
    return text


def open_store(path: Path | str) -> StoreReader:
    return StoreReader(path)
