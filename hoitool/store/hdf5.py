"""h5py as hoitool's stores need it: the Zstandard filter registered, and no file locks on shared file systems."""

from __future__ import annotations

import os

from hoitool.errors import HoitoolError


def h5py_module():
    """``h5py`` after registering hdf5plugin's filters (HDF5 segments are zstd-compressed: docs/cache-format.md).

    File locking is off by default (``HDF5_USE_FILE_LOCKING``) because a store is read by many
    processes at once on NFS/Lustre, where HDF5's locks fail; hoitool's own lock guards writers.
    """
    os.environ.setdefault("HDF5_USE_FILE_LOCKING", "FALSE")
    try:
        import hdf5plugin  # noqa: F401  (importing it registers the filters with h5py's HDF5 library)
    except ImportError:
        raise HoitoolError(
            "hdf5plugin is not installed; HDF5 stores are zstd-compressed through it: pip install hdf5plugin"
        ) from None
    import h5py

    return h5py


def dataset_filter(codec: dict) -> dict:
    """``create_dataset`` options of a recorded HDF5 codec: zstd (HDF5's registered filter 32015), or gzip
    (what schema-2 stores used before zstd)."""
    if codec["name"] == "zstd":
        import hdf5plugin

        return dict(hdf5plugin.Zstd(clevel=codec["level"]))
    if codec["name"] == "gzip":
        return dict(compression="gzip", compression_opts=codec["level"], shuffle=codec.get("shuffle", False))
    raise ValueError(f"unknown HDF5 codec {codec!r}")
