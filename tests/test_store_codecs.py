"""Codecs and the fast row reads of lazy training (issue 11, items 3-4): zstd in both backends, old gzip segments
still read, Zarr rows read without zarr-python's machinery equal what zarr reads, one shared buffer per batch."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import zarr
from test_store import build, features, segment_of

from hoitool.store import open_store
from hoitool.store import segments as segments_module
from hoitool.store.reader import DamagedStoreError
from hoitool.store.segments import read_index
from hoitool.store.tools import compact_store, store_info
from hoitool.store.zarr_rows import row_reader
from hoitool.train import data as data_module

IDS = [f"v{number}" for number in range(1, 8)]


def stored(video_id: str) -> dict:
    arrays = features(int(video_id[1:]), frames=32, boxes=16, dim=16)
    return {name: value.astype(np.float16) if name == "nodes" else value for name, value in arrays.items()}


def build_big(path, ids=IDS):
    from test_store import HEADER

    from hoitool.store import StagedStore

    staged = StagedStore(path, "features", HEADER)
    with staged.writer() as write:
        for video_id in ids:
            write(video_id, features(int(video_id[1:]), frames=32, boxes=16, dim=16), {"views": 1})
    staged.finalize({"manifest": "m.json"}, {"views": 1, "dim": 16})


def test_old_gzip_segments_read_beside_new_zstd_ones_and_compact_rewrites_them(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    old = {"name": "gzip", "level": 1, "shuffle": True}  # the HDF5 codec of schema-2 stores before zstd
    with monkeypatch.context() as patch:
        patch.setitem(segments_module.CODECS, "hdf5", old)
        build(path, ["v1", "v2"])
    build(path, ["v3"])
    first, second = read_index(path)["segments"]
    assert segments_module.segment_meta(path, first)["codec"] == old
    assert segments_module.segment_meta(path, second)["codec"] == {"name": "zstd", "level": 1}
    fingerprint = open_store(path).fingerprint
    assert store_info(path)["codec"] == [old, {"name": "zstd", "level": 1}]  # info names both
    reader = open_store(path)
    for video_id in ("v1", "v2", "v3"):
        np.testing.assert_array_equal(reader.read(video_id)["nodes"], features(int(video_id[1:]))["nodes"].astype("f2"))
    compact_store(path)
    assert store_info(path)["codec"] == {"name": "zstd", "level": 1}  # compact is the migration to the new codec
    assert open_store(path).fingerprint == fingerprint and len(read_index(path)["segments"]) == 1


def test_zarr_rows_read_directly_equal_what_zarr_reads_across_shards(tmp_path, monkeypatch):
    monkeypatch.setattr(segments_module, "SHARD_CHUNKS", 3)  # 7 videos: shards of 3, 3 and 1 rows
    path = tmp_path / "f.zarr"
    build_big(path)
    segment, _ = segment_of(path, "v1")
    group = zarr.open_group(str(segment), mode="r")
    direct = {name: row_reader(segment / name, group[name]) for name in group.array_keys()}
    assert direct["nodes"] is not None and direct["boxes"] is not None  # one row a chunk: read directly
    assert direct["frame_size"] is None  # several videos a chunk (held whole instead): zarr reads it
    assert len([file for file in (segment / "nodes").iterdir() if file.name.startswith("c")]) == 3
    for name, rows in direct.items():
        if rows is None:
            continue
        for row in range(group[name].shape[0]):
            mine, theirs = rows.read(row), group[name][row]
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape, name
            np.testing.assert_array_equal(mine, theirs, err_msg=f"{name}[{row}]")
    with pytest.raises(IndexError):
        direct["nodes"].read(len(IDS))
    reader = open_store(path)
    for video_id in IDS:
        np.testing.assert_array_equal(reader.read(video_id)["nodes"], stored(video_id)["nodes"])


def test_layouts_the_direct_reader_does_not_know_are_read_by_zarr(tmp_path):
    from zarr.codecs import BloscCodec

    data = np.arange(4 * 6, dtype="f2").reshape(4, 6)
    blosc = zarr.create_array(str(tmp_path / "blosc"), shape=data.shape, chunks=(1, 6), shards=(4, 6), dtype="f2",
                              compressors=[BloscCodec(cname="lz4")])  # fmt: skip
    unsharded = zarr.create_array(str(tmp_path / "plain"), shape=data.shape, chunks=(1, 6), dtype="f2")
    rows = zarr.create_array(str(tmp_path / "rows"), shape=data.shape, chunks=(2, 6), shards=(4, 6), dtype="f2")
    for array in (blosc, unsharded, rows):
        array[:] = data
        assert row_reader(tmp_path, array) is None


def test_a_missing_shard_or_a_damaged_index_fails_the_video_even_after_it_was_verified(tmp_path, monkeypatch):
    monkeypatch.setattr(segments_module, "SHARD_CHUNKS", 3)
    monkeypatch.setattr(segments_module, "SMALL_ROW_BYTES", 0)  # nothing held whole: every row read directly
    path = tmp_path / "f.zarr"
    build_big(path)
    reader = open_store(path)
    for video_id in IDS:
        reader.read(video_id, ["nodes"])  # hashed once: later reads of these videos skip the digest
    segment, _ = segment_of(path, "v1")
    first, second, third = sorted(file for file in (segment / "nodes").iterdir() if file.name.startswith("c"))
    first.unlink()
    with pytest.raises(DamagedStoreError, match="'v1'"):  # the fill value, caught by the digest
        open_store(path).read("v1", ["nodes"])
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    with pytest.raises(DamagedStoreError, match="'v4'"):  # already verified by this reader: the change is seen
        reader.read("v4", ["nodes"])
    data = bytearray(third.read_bytes())
    data[-8] ^= 0xFF  # one byte of the index: its crc32c no longer matches
    third.write_bytes(bytes(data))
    with pytest.raises(DamagedStoreError, match="'v7'.*crc32c"):
        open_store(path).read("v7", ["nodes"])


def test_a_worker_batch_is_one_shared_buffer_and_arrives_as_the_same_tensors(monkeypatch):
    samples = [
        {
            "nodes": np.full((3, 2, 4), number, np.float16),
            "valid": np.ones((3, 2), bool),
            "boxes": np.zeros((3, 2, 4), np.float32),
            "frame_indices": np.arange(3),
            "frame_size": np.array([48, 64]),
            "index": number,
            "view": 0,
            "weight": 1.0,
            "target": number % 2,
            "objects": np.array([1, 0, 1], np.float32),
        }
        for number in range(3)
    ]
    expected = data_module.collate(samples)
    monkeypatch.setattr(data_module, "get_worker_info", lambda: object())  # collate as a DataLoader worker does
    packed = data_module.collate(samples)
    assert isinstance(packed, data_module.PackedBatch)
    assert len({tensor.untyped_storage().data_ptr() for tensor in packed.values()}) == 1
    assert packed.buffer.is_shared()
    from multiprocessing.reduction import ForkingPickler  # with the reductions torch registers for tensors

    for arrived in (ForkingPickler.loads(ForkingPickler.dumps(packed)), pickle.loads(pickle.dumps(packed))):
        assert type(arrived) is dict and list(arrived) == list(expected)
        for name, tensor in expected.items():
            assert arrived[name].dtype == tensor.dtype and torch.equal(arrived[name], tensor), name
