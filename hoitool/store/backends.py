"""HDF5 and Zarr backends behind one small interface, chosen by the path's suffix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, cast

import numpy as np

from hoitool.errors import UsageError
from hoitool.store.hdf5 import h5py_module
from hoitool.store.schema import META_ATTR

SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".zarr": "zarr"}
Mode = Literal["r", "r+", "a", "w", "w-"]  # the open modes both backends accept


def backend_name(path: Path | str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"{path}: unknown store suffix {suffix!r}; use .h5 (HDF5) or .zarr (Zarr)")
    return SUFFIXES[suffix]


class HDF5Backend:
    """One HDF5 file (schema 1: still read; written only by tests of old stores); gzip-4, a chunk per array per video."""

    def __init__(self, path: Path | str, mode: Mode = "r"):
        self.path = Path(path)
        self.file = h5py_module().File(self.path, mode)

    def read_meta(self) -> dict:
        raw = self.file.attrs.get(META_ATTR)
        return json.loads(raw) if raw is not None else {}

    def write_meta(self, meta: dict) -> None:
        self.file.attrs[META_ATTR] = json.dumps(meta, sort_keys=True)

    def video_keys(self) -> list[str]:
        return sorted(self.file["videos"].keys()) if "videos" in self.file else []

    def array_names(self, key: str) -> list[str]:
        return sorted(self.file["videos"][key].keys())

    def read_video(self, key: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        group = self.file["videos"][key]
        return {name: group[name][()] for name in (names or group.keys())}

    def open_video(self, key: str):
        """``(attrs, read(names))`` of one video from a single group lookup (a checked read needs both)."""
        group = self.file["videos"][key]
        raw = group.attrs.get(META_ATTR)
        return (json.loads(raw) if raw is not None else {}), lambda names: {
            name: group[name][()] for name in (names or group.keys())
        }

    def write_video(self, key: str, arrays: dict[str, np.ndarray], video_attrs: dict) -> None:
        group = self.file.require_group("videos").create_group(key)
        for name in sorted(arrays):
            array = arrays[name]
            options = dict(compression="gzip", compression_opts=4, shuffle=True) if array.size > 64 else {}
            group.create_dataset(name, data=array, **options)
        group.attrs[META_ATTR] = json.dumps(video_attrs, sort_keys=True)

    def video_attrs(self, key: str) -> dict:
        raw = self.file["videos"][key].attrs.get(META_ATTR)
        return json.loads(raw) if raw is not None else {}

    def close(self) -> None:
        self.file.close()


class ZarrBackend:
    """A Zarr v3 directory; zstd-compressed, one chunk per array per video."""

    def __init__(self, path: Path | str, mode: Mode = "r"):
        import zarr

        self.path = Path(path)
        self.mode = mode
        self.root = zarr.open_group(str(self.path), mode=mode, zarr_format=3)
        self._videos_group = None

    def read_meta(self) -> dict:
        raw = self.root.attrs.get(META_ATTR)
        return json.loads(cast(str, raw)) if raw is not None else {}  # write_meta stores a JSON string

    def write_meta(self, meta: dict) -> None:
        self.root.attrs[META_ATTR] = json.dumps(meta, sort_keys=True)

    def _videos(self):
        if self._videos_group is not None:
            return self._videos_group
        videos = self.root["videos"] if "videos" in self.root else None
        if self.mode == "r":  # read-only: the group cannot change under us, so open its metadata once
            self._videos_group = videos
        return videos

    def video_keys(self) -> list[str]:
        videos = self._videos()
        return sorted(videos.group_keys()) if videos is not None else []

    def array_names(self, key: str) -> list[str]:
        return sorted(self._videos()[key].array_keys())

    def read_video(self, key: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        group = self._videos()[key]
        return {name: group[name][...] for name in (names or sorted(group.array_keys()))}

    def open_video(self, key: str):
        """``(attrs, read(names))`` of one video from a single group lookup (a checked read needs both)."""
        group = self._videos()[key]
        raw = group.attrs.get(META_ATTR)
        return (
            (json.loads(raw) if raw is not None else {}),
            lambda names: {name: group[name][...] for name in (names or sorted(group.array_keys()))},
        )

    def write_video(self, key: str, arrays: dict[str, np.ndarray], video_attrs: dict) -> None:
        videos = self.root.require_group("videos")
        group = videos.create_group(key)
        for name in sorted(arrays):
            array = arrays[name]
            shape = array.shape if array.ndim else ()
            group.create_array(name, data=array, chunks=shape if array.size else "auto")
        group.attrs[META_ATTR] = json.dumps(video_attrs, sort_keys=True)

    def video_attrs(self, key: str) -> dict:
        raw = self._videos()[key].attrs.get(META_ATTR)
        return json.loads(raw) if raw is not None else {}

    def close(self) -> None:
        pass


def open_backend(path: Path | str, mode: Mode = "r", backend: str | None = None):
    """Open a store; ``backend`` overrides the suffix (temporary files have none)."""
    from hoitool.store.segments import SegmentedBackend, is_segmented

    path = Path(path)
    cls: type = HDF5Backend if (backend or backend_name(path)) == "hdf5" else ZarrBackend
    if mode == "r" and not path.exists():
        raise UsageError(f"{path}: store not found")
    if mode == "r" and path.is_dir() and (is_segmented(path) or cls is HDF5Backend):
        cls = SegmentedBackend  # schema 2; a single HDF5 file or a Zarr folder without an index is schema 1
    try:
        return cls(path, mode)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"{path}: cannot open store ({str(exc).splitlines()[0]})") from None
