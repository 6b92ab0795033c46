"""Read-only access to a finished store; lazy and picklable so each DataLoader worker opens its own handle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hoitool.errors import UsageError
from hoitool.store.backends import open_backend
from hoitool.store.schema import SCHEMA_VERSION, video_id_from_key, video_key


class StoreReader:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        backend = open_backend(self.path, "r")
        try:
            self.attrs = backend.read_meta()
            keys = backend.video_keys()
        finally:
            backend.close()
        if not self.attrs:
            raise UsageError(f"{self.path}: not a hoitool store (no metadata; an unfinished run leaves only a .parts folder)")
        if self.attrs.get("schema_version") != SCHEMA_VERSION:
            raise UsageError(f"{self.path}: store schema {self.attrs.get('schema_version')} is not supported (expected {SCHEMA_VERSION})")
        self.video_ids = sorted(video_id_from_key(key) for key in keys)
        self._backend = None
        self._pid = None

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
        return self._backend

    def read(self, video_id: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        return self._open().read_video(video_key(video_id), names)

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
        return state

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self.video_ids)


def open_store(path: Path | str) -> StoreReader:
    return StoreReader(path)
