"""The store schema (docs/cache-format.md): which arrays each kind of store holds per video.

Both backends (HDF5 ``.h5`` and Zarr ``.zarr``) hold the same logical layout::

    /                       attr "hoitool" = JSON metadata (schema version, kind, provenance, fingerprint, failures)
    /videos/<video key>/    one group per finished video, with the arrays below
"""

from __future__ import annotations

from urllib.parse import quote, unquote

import numpy as np

SCHEMA_VERSION = 2  # 2: segments + index (hoitool.store.segments); 1: one HDF5 file / Zarr group, still read
READABLE_SCHEMAS = (1, 2)
META_ATTR = "hoitool"

# name -> (dtype, ndim); the leading axis of box arrays is the clip (C), of feature arrays the view (V = clips x crops).
ARRAYS = {
    "boxes": {
        "frame_indices": ("int64", 2),  # (C, T) decoded frame index of each sampled frame
        "frame_valid": ("bool", 2),  # (C, T) False where the video had fewer frames than T (padding)
        "frame_size": ("int32", 1),  # (2,) source height, width
        "boxes": ("float32", 4),  # (C, T, K, 4) xyxy in source pixels
        "scores": ("float32", 3),  # (C, T, K)
        "labels": ("int64", 3),  # (C, T, K) class index, -1 for class-less proposals
        "is_person": ("bool", 3),  # (C, T, K)
        "valid": ("bool", 3),  # (C, T, K) False for padding (frames with fewer than K boxes)
    },
    "features": {
        "frame_indices": ("int64", 2),  # (V, T)
        "frame_valid": ("bool", 2),  # (V, T)
        "frame_size": ("int32", 1),  # (2,)
        "boxes": ("float32", 4),  # (V, T, K, 4) source pixels
        "valid": ("bool", 3),  # (V, T, K)
        "nodes": ("float16", 4),  # (V, T, K, D) node features
    },
}
OPTIONAL_ARRAYS = {
    "features": {
        "frame_features": ("float16", 3),  # (V, T, D) whole-frame features
        "frame_maps": ("float16", 4),  # (V, T, g*g, D) each frame's map average-pooled to a g x g grid
    }
}


def video_key(video_id: str) -> str:
    """A group name safe for HDF5, Zarr and file systems (ids may hold '/' or '.')."""
    return quote(video_id, safe="-_")


def video_id_from_key(key: str) -> str:
    return unquote(key)


def check_arrays(kind: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Cast to the schema's dtypes and check names and ranks; raises ValueError on a mismatch."""
    expected = dict(ARRAYS[kind])
    optional = OPTIONAL_ARRAYS.get(kind, {})
    out = {}
    for name, array in arrays.items():
        if name not in expected and name not in optional:
            raise ValueError(f"unexpected array {name!r} for a {kind} store")
        dtype, ndim = expected.get(name) or optional[name]
        array = np.asarray(array)
        if array.ndim != ndim:
            raise ValueError(f"array {name!r} has {array.ndim} dims, expected {ndim}")
        out[name] = np.ascontiguousarray(array.astype(dtype, copy=False))
    missing = set(expected) - set(out)
    if missing:
        raise ValueError(f"missing arrays {sorted(missing)} for a {kind} store")
    return out
