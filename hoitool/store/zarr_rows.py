"""One video's row of a sharded Zarr segment array, read without zarr-python's per-read machinery.

zarr-python 3 spends about 1.2 ms of CPU on every read (an event-loop hop, the shard index
read and checked again, buffer objects) around a 0.5 ms zstd decode of a video's nodes
(T=32, K=15, D=512 float16; docs/cache-format.md, "Lazy reads"). Lazy training reads one row
per video, so this reader follows the Zarr 3 sharding specification directly for the layout
hoitool writes (one inner chunk per row, ``bytes`` then ``zstd`` inside, the shard index at
the end, checked by crc32c): it keeps each shard's index, which never changes in an
immutable segment, and per row does one ``pread`` and one zstd decode with numcodecs, the
codec library zarr itself uses. Any other layout returns None from :func:`row_reader` and
is read by zarr as before; tests check both give the same arrays.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

EMPTY = 2**64 - 1  # an index entry (offset, nbytes) of two of these: the chunk was never written (fill value)


class ShardedRows:
    """Rows of one Zarr 3 array whose inner chunks are single rows compressed with zstd."""

    def __init__(self, folder: Path, array, zstd, crc32c):
        metadata = array.metadata
        self.folder = folder
        self.encode_key = metadata.encode_chunk_key
        self.shard_rows = int(metadata.chunk_grid.chunk_shape[0])
        self.row_shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype).newbyteorder("<")
        self.fill = np.full(self.row_shape, metadata.fill_value, dtype=self.dtype)
        self.rows = int(array.shape[0])
        self.zstd, self.crc32c = zstd, crc32c  # numcodecs' Zstd codec; google_crc32c.value
        self.indexes: dict[int, tuple[tuple, np.ndarray]] = {}  # shard -> (file identity, (rows, 2) offsets/sizes)

    def read(self, row: int) -> np.ndarray:
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} out of range for {self.rows} rows")
        shard, inner = divmod(row, self.shard_rows)
        path = self.folder / self.encode_key((shard,) + (0,) * len(self.row_shape))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return self.fill.copy()  # what zarr reads for a missing shard; the video's digest tells it apart
        try:
            entry = self._index(fd, shard)[inner]
            if int(entry[0]) == EMPTY and int(entry[1]) == EMPTY:
                return self.fill.copy()
            offset, size = int(entry[0]), int(entry[1])
            raw = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(raw) != size:
            raise OSError(f"{path}: shard truncated (chunk at {offset} needs {size} bytes)")
        data = np.frombuffer(self.zstd.decode(raw), dtype=self.dtype)
        if data.size != int(np.prod(self.row_shape)):
            raise ValueError(f"{path}: a chunk decodes to {data.size} values, not {int(np.prod(self.row_shape))}")
        return data.reshape(self.row_shape)

    def _index(self, fd: int, shard: int) -> np.ndarray:
        """The shard's index, read again only when its file changed (a segment is never rewritten in place)."""
        status = os.fstat(fd)
        identity = (status.st_ino, status.st_size, status.st_mtime_ns)
        cached = self.indexes.get(shard)
        if cached is not None and cached[0] == identity:
            return cached[1]
        length = 16 * self.shard_rows + 4
        if status.st_size < length:
            raise OSError(f"{self.folder.name}: shard {shard} is truncated (no complete index)")
        tail = os.pread(fd, length, status.st_size - length)
        body, (checksum,) = tail[:-4], struct.unpack("<I", tail[-4:])
        if self.crc32c(body) != checksum:
            raise OSError(f"{self.folder.name}: shard {shard} index fails its crc32c check")
        index = np.frombuffer(body, dtype="<u8").reshape(self.shard_rows, 2)
        self.indexes[shard] = (identity, index)
        return index


def row_reader(folder: Path, array) -> ShardedRows | None:
    """A :class:`ShardedRows` for ``array`` (opened by zarr from ``folder``) when its layout is one it reads, else None."""
    try:
        import google_crc32c  # what zarr >= 3.1 checks shard indexes with; zarr 3.0 used another package
        from numcodecs import Zstd
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
        from zarr.codecs.sharding import ShardingCodecIndexLocation
        from zarr.core.chunk_grids import RegularChunkGrid

        metadata = array.metadata
        codecs = metadata.codecs
        if getattr(metadata, "zarr_format", None) != 3 or len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        grid = metadata.chunk_grid
        shape = tuple(array.shape)
        if not isinstance(grid, RegularChunkGrid) or len(shape) < 2:
            return None
        shard_shape = tuple(grid.chunk_shape)
        inner, index_codecs = sharding.codecs, sharding.index_codecs
        little = ("little", None)
        ok = (
            tuple(sharding.chunk_shape) == (1, *shape[1:])
            and shard_shape[1:] == shape[1:]
            and sharding.index_location == ShardingCodecIndexLocation.end
            and len(inner) == 2
            and isinstance(inner[0], BytesCodec)
            and _endian(inner[0]) in little
            and isinstance(inner[1], ZstdCodec)
            and len(index_codecs) == 2
            and isinstance(index_codecs[0], BytesCodec)
            and _endian(index_codecs[0]) in little
            and isinstance(index_codecs[1], Crc32cCodec)
            and np.dtype(array.dtype).kind in "biuf"
        )
        return ShardedRows(folder, array, Zstd(), google_crc32c.value) if ok else None
    except Exception:  # another zarr version's classes, metadata or packages: zarr reads it
        return None


def _endian(codec) -> str | None:
    endian = getattr(codec, "endian", None)
    return getattr(endian, "value", endian)
