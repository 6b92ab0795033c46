"""Lazy training reads (issue 11, item 4): small arrays held per process, batches collated in shared memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_store import features, segment_of

from hoitool.manifest import Manifest, VideoEntry
from hoitool.store import StagedStore, open_store
from hoitool.store import segments as segments_module
from hoitool.store.reader import DamagedStoreError
from hoitool.train.data import EpochBatchSampler, ViewDataset, batches, collate, make_loader, split_videos

IDS = ["v1", "v2", "v3", "v4", "v5"]


def video(video_id: str) -> dict:
    # boxes (1, 32, 16, 4) float32 = 8 KiB a video: one video per chunk, so a chunk's damage is one video's
    return features(int(video_id[1:]), frames=32, boxes=16, dim=8)


def build(path, ids=IDS):
    staged = StagedStore(path, "features", {"config": {}, "upstream": None})
    with staged.writer() as write:
        for video_id in ids:
            write(video_id, video(video_id), {"views": 1})
    staged.finalize({"manifest": str(path.parent / "m.json")}, {"views": 1, "dim": 8})
    Manifest(
        dataset="t",
        classes=["a", "b"],
        multilabel=False,
        videos=[VideoEntry(id=i, source=f"{i}.mp4", labels=[int(i[1:]) % 2], split="train") for i in ids],
    ).save(path.parent / "m.json")


def segment_reader(reader, video_id):
    from hoitool.store.schema import video_key

    backend = reader._open()
    return backend._segment(backend.entries[video_key(video_id)][0])


def test_small_arrays_are_read_whole_once_and_equal_the_stored_rows(tmp_path):
    build(tmp_path / "f.zarr")
    build(tmp_path / "f.h5")
    zarr_reader, hdf5_reader = open_store(tmp_path / "f.zarr"), open_store(tmp_path / "f.h5")
    for video_id in IDS:
        expected = video(video_id)
        for reader in (zarr_reader, hdf5_reader):
            arrays = reader.read(video_id)
            assert arrays.keys() == expected.keys()
            for name, value in expected.items():
                stored = np.asarray(value).astype(arrays[name].dtype)  # the store keeps nodes in float16
                np.testing.assert_array_equal(arrays[name], stored, err_msg=f"{reader.path}/{video_id}/{name}")
    for reader in (zarr_reader, hdf5_reader):
        held = segment_reader(reader, "v1").held
        assert {"boxes", "valid", "frame_size", "frame_indices", "frame_valid"} <= set(held)  # read whole, once
        assert held["boxes"].shape == (len(IDS), 1, 32, 16, 4)
        arrays = reader.read("v1", ["boxes"])
        arrays["boxes"][:] = -1  # a caller editing what it got does not edit what the reader holds
        np.testing.assert_array_equal(reader.read("v1", ["boxes"])["boxes"], video("v1")["boxes"])


def test_over_the_budget_nothing_is_held(tmp_path, monkeypatch):
    build(tmp_path / "f.zarr")
    monkeypatch.setattr(segments_module, "HELD_BYTES", 1000)
    reader = open_store(tmp_path / "f.zarr")
    np.testing.assert_array_equal(reader.read("v2", ["boxes"])["boxes"], video("v2")["boxes"])
    assert not segment_reader(reader, "v2").held


def _corrupt_chunk(shard, row: int) -> None:
    """Overwrite the middle of one inner chunk of a Zarr shard (index at the end: uint64 offset, size per chunk + crc)."""
    data = bytearray(shard.read_bytes())
    offset, size = np.frombuffer(bytes(data[-(len(IDS) * 16 + 4) : -4]), "<u8").reshape(-1, 2)[row]
    data[int(offset) + 4 : int(offset) + int(size) - 4] = b"\xff" * (int(size) - 8)
    shard.write_bytes(bytes(data))


def test_a_damaged_neighbour_fails_only_its_own_video(tmp_path):
    path = tmp_path / "f.zarr"
    build(path)
    segment, row = segment_of(path, "v2")
    (shard,) = [file for file in (segment / "boxes").rglob("c*") if file.is_file()]
    _corrupt_chunk(shard, row)
    reader = open_store(path)
    np.testing.assert_array_equal(reader.read("v1", ["boxes"])["boxes"], video("v1")["boxes"])  # the whole read failed
    with pytest.raises(DamagedStoreError, match="'v2'"):
        reader.read("v2", ["boxes"])
    np.testing.assert_array_equal(reader.read("v3", ["boxes"])["boxes"], video("v3")["boxes"])
    assert "boxes" not in segment_reader(reader, "v1").held


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_worker_batches_equal_in_process_batches(tmp_path, suffix):
    """Collated in a worker, in shared memory: the same tensors (values and dtypes) as collated here."""
    path = tmp_path / f"f{suffix}"
    build(path)
    reader = open_store(path)
    videos = split_videos(Manifest.load(tmp_path / "m.json"), reader.video_ids, "train")
    dataset = ViewDataset(reader, videos)
    sampler = EpochBatchSampler(len(videos), 2, seed=3)
    expected = [collate([dataset[ref] for ref in refs]) for refs in sampler]
    loader = make_loader(ViewDataset(open_store(path), videos), 2, False, seed=0, batch_sampler=sampler)
    got = list(batches(loader))
    assert len(got) == len(expected) == 3
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.keys() == theirs.keys()
        for name in theirs:
            assert mine[name].dtype == theirs[name].dtype, name
            assert torch.equal(mine[name], theirs[name]), name
    assert got[0]["nodes"].dtype == torch.float16  # what the store holds, converted where the model runs


class _Niceness(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        import os

        return os.nice(0)


def test_workers_can_run_at_a_lower_priority():
    import os

    from hoitool.io.process import worker_init

    loader = torch.utils.data.DataLoader(_Niceness(), num_workers=1, worker_init_fn=worker_init(niceness=3))
    assert [int(value) for value in loader] == [min(19, os.nice(0) + 3)] * 2
    default = torch.utils.data.DataLoader(_Niceness(), num_workers=1, worker_init_fn=worker_init())
    assert [int(value) for value in default] == [os.nice(0)] * 2
