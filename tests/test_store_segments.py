"""Schema-2 stores (issue 11): segments + index, O(new) commits, merges by hard link, compact, old stores readable."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_store import HEADER, assert_same_content, build, features

from hoitool.errors import UsageError
from hoitool.store import StagedStore, open_store
from hoitool.store.backends import HDF5Backend, ZarrBackend
from hoitool.store.fingerprint import array_digests, store_fingerprint, video_digest
from hoitool.store.schema import video_key
from hoitool.store.segments import INDEX, SEGMENTS, read_index
from hoitool.store.tools import compact_store, merge_stores, store_info, verify_store


def build_legacy(path: Path, ids, header=HEADER, with_array_digests=True, shard=None) -> None:
    """A schema-1 store (one HDF5 file / one Zarr group, one group per video) as hoitool wrote it before segments."""
    backend = (HDF5Backend if path.suffix == ".h5" else ZarrBackend)(path, "w")
    digests = {}
    for video_id in ids:
        arrays = {
            name: np.ascontiguousarray(value.astype(np.float16 if name == "nodes" else value.dtype))
            for name, value in features(int(video_id[1:])).items()
        }
        arrays["frame_size"] = arrays["frame_size"].astype(np.int32)
        attrs = {"views": 1, "digest": video_digest(arrays)}
        if with_array_digests:
            attrs["array_digests"] = array_digests(arrays)
        digests[video_id] = attrs["digest"]
        backend.write_video(video_key(video_id), arrays, attrs)
    meta = {
        "schema_version": 1,
        "kind": "features",
        "header": header,
        "provenance": {"manifest": "m.json", "shard": list(shard) if shard else None},
        "failed": [],
        "fingerprint": store_fingerprint("features", digests),
        "num_videos": len(digests),
    }
    backend.write_meta(meta)
    backend.close()


def files_of(path: Path) -> list[Path]:
    return [Path(root, name) for root, _, names in os.walk(path) for name in names]


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_each_run_adds_one_segment_and_leaves_the_old_ones_untouched(tmp_path, suffix):
    path = tmp_path / f"f{suffix}"
    build(path, ["v1", "v2"])
    first = read_index(path)["segments"]
    before = {file: (file.stat().st_ino, file.stat().st_mtime_ns) for file in files_of(path / SEGMENTS)}
    build(path, ["v3"])
    index = read_index(path)
    assert index["segments"][: len(first)] == first and len(index["segments"]) == len(first) + 1
    assert all((file.stat().st_ino, file.stat().st_mtime_ns) == state for file, state in before.items())
    assert index["hoitool"]["schema_version"] == 2 and index["hoitool"]["num_videos"] == 3
    build(tmp_path / f"ref{suffix}", ["v1", "v2", "v3"])
    assert_same_content(tmp_path / f"ref{suffix}", path)


def test_a_zarr_segment_has_a_few_files_per_array_not_per_video(tmp_path):
    path = tmp_path / "f.zarr"
    build(path, [f"v{i}" for i in range(1, 41)])
    files = files_of(path)
    # index + segment json + group zarr.json + per array (6): zarr.json + one shard file
    assert len(files) == 3 + 2 * 6, sorted(map(str, files))
    folders = [Path(root) for root, _, _ in os.walk(path)]
    # the store, segments/, the segment, one per array: shard files sit in the array's folder ("c.0.0.0.0"),
    # not in a folder per dimension (inode quotas count folders too)
    assert len(folders) == 3 + 6, sorted(map(str, folders))
    shard = path / SEGMENTS / "seg-000001.zarr" / "nodes" / "c.0.0.0.0.0"
    assert shard.is_file()
    import zarr

    nodes = zarr.open_group(str(path / SEGMENTS / "seg-000001.zarr"), mode="r")["nodes"]  # plain zarr reads it
    np.testing.assert_array_equal(nodes[0], features(1)["nodes"].astype(np.float16))  # row 0: "v1" (id order)
    from hoitool.store.ownership import store_file_is_ours

    assert store_file_is_ours(shard.relative_to(path).parts)
    assert not store_file_is_ours((SEGMENTS, "seg-000001.zarr", "nodes", "c.0.x"))
    assert not store_file_is_ours((SEGMENTS, "seg-000001.zarr", "nodes", "notes.txt"))


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_merge_links_the_shards_segments_and_writes_no_array_data(tmp_path, suffix):
    build(tmp_path / f"one{suffix}", ["v1", "v2", "v3", "v4", "v5"])
    build(tmp_path / f"s0{suffix}", ["v1", "v3", "v5"], shard=(0, 2))
    build(tmp_path / f"s1{suffix}", ["v2", "v4"], shard=(1, 2))
    merged = tmp_path / f"m{suffix}"
    merge_stores([tmp_path / f"s0{suffix}", tmp_path / f"s1{suffix}"], merged)
    assert_same_content(tmp_path / f"one{suffix}", merged)
    inputs = {
        file.stat().st_ino for shard in ("s0", "s1") for file in files_of(tmp_path / f"{shard}{suffix}" / SEGMENTS)
    }
    segment_files = files_of(merged / SEGMENTS)
    assert segment_files and all(file.stat().st_ino in inputs for file in segment_files)  # hard links, no copies
    moved = tmp_path / "elsewhere" / merged.name  # the merged store survives moving it and deleting the inputs
    moved.parent.mkdir()
    os.replace(merged, moved)
    for shard in ("s0", "s1"):
        StagedStore(tmp_path / f"s{shard[1]}{suffix}", "features", {**HEADER, "upstream": "new"}, force=True).close()
    assert verify_store(moved) == []
    assert open_store(moved).fingerprint == open_store(tmp_path / f"one{suffix}").fingerprint


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_compact_rewrites_into_one_segment_with_the_same_content(tmp_path, suffix):
    path = tmp_path / f"f{suffix}"
    for ids in (["v1"], ["v2", "v3"], ["v4"]):
        build(path, ids)
    fingerprint = open_store(path).fingerprint
    meta = compact_store(path)
    extension = "h5" if suffix == ".h5" else "zarr"
    assert meta["fingerprint"] == fingerprint and read_index(path)["segments"] == [f"seg-000004.{extension}"]
    assert sorted(file.name for file in (path / SEGMENTS).iterdir()) == sorted(
        [f"seg-000004.{extension}", "seg-000004.json"]
    )
    assert verify_store(path) == []
    build(tmp_path / f"ref{suffix}", ["v1", "v2", "v3", "v4"])
    assert_same_content(tmp_path / f"ref{suffix}", path)


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_a_schema_1_store_stays_readable_and_grows_into_schema_2(tmp_path, suffix):
    old = tmp_path / f"old{suffix}"
    build_legacy(old, ["v1", "v2"])
    reader = open_store(old)
    assert reader.attrs["schema_version"] == 1 and reader.video_ids == ["v1", "v2"]
    assert verify_store(old) == [] and store_info(old)["videos_done"] == 2
    build(tmp_path / f"ref{suffix}", ["v1", "v2", "v3", "v4"])
    staged = StagedStore(old, "features", HEADER)  # a re-run that adds videos rewrites it once into segments
    staged.checkpoint_bytes = 1
    staged.save("v3", features(3), {"views": 1})  # in a checkpoint segment
    staged.checkpoint_bytes = 1 << 40
    staged.save("v4", features(4), {"views": 1})  # a part
    staged.finalize({"manifest": "m.json", "shard": None})
    assert read_index(old)["hoitool"]["schema_version"] == 2 and not (tmp_path / f"old{suffix}.old").exists()
    assert_same_content(tmp_path / f"ref{suffix}", old)


def test_a_crash_before_the_index_is_written_leaves_the_old_store_and_the_orphan_goes(tmp_path, monkeypatch):
    from hoitool.store import segments

    path = tmp_path / "f.zarr"
    build(path, ["v1"])
    index_before = (path / INDEX).read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if killed after the new segment was renamed into place

    monkeypatch.setattr(segments, "write_index", crash)
    staged = StagedStore(path, "features", HEADER)
    staged.save("v2", features(2), {"views": 1})
    with pytest.raises(KeyboardInterrupt):
        staged.finalize({"manifest": "m.json", "shard": None})
    staged.close()
    monkeypatch.undo()
    assert (path / INDEX).read_bytes() == index_before and open_store(path).video_ids == ["v1"]
    assert len(list((path / SEGMENTS).glob("seg-*.json"))) == 2  # the orphan segment is there ...
    build(path, [])  # ... until the next writer, which also commits the staged v2
    assert len(list((path / SEGMENTS).glob("seg-*.json"))) == 2 and open_store(path).video_ids == ["v1", "v2"]
    build(tmp_path / "ref.zarr", ["v1", "v2"])
    assert_same_content(tmp_path / "ref.zarr", path)


def test_a_folder_without_an_index_is_not_ours(tmp_path):
    path = tmp_path / "f.h5"
    (path / SEGMENTS).mkdir(parents=True)
    with pytest.raises(UsageError, match="without a hoitool store index"):
        StagedStore(path, "features", HEADER)


def test_index_records_codec_and_segment_metadata_is_plain_json(tmp_path):
    path = tmp_path / "f.h5"
    build(path, ["v1", "v2"])
    index = json.loads((path / INDEX).read_text())
    assert index["hoitool"]["codec"] == {"name": "zstd", "level": 1}
    segment = json.loads((path / SEGMENTS / "seg-000001.json").read_text())
    assert segment["videos"]["id"] == ["v1", "v2"] and len(segment["videos"]["array_digests"]["nodes"]) == 2
    assert segment["codec"] == index["hoitool"]["codec"]
    import h5py
    import hdf5plugin  # noqa: F401  (what a plain h5py reader imports: docs/cache-format.md)

    with h5py.File(path / SEGMENTS / "seg-000001.h5", "r") as handle:  # plain h5py reads a video's row
        assert handle["nodes"].id.get_create_plist().get_filter(0)[0] == 32015  # HDF5's registered Zstandard filter
        np.testing.assert_array_equal(handle["nodes"][1], features(2)["nodes"].astype(np.float16))


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_checkpoints_bound_the_staged_parts_and_a_killed_run_resumes_identically(tmp_path, suffix):
    path = tmp_path / f"f{suffix}"
    staged = StagedStore(path, "features", HEADER)
    staged.checkpoint_bytes = 1  # every part becomes a segment at once
    for number in (1, 2, 3):
        staged.save(f"v{number}", features(number), {"views": 1})
    assert not list(staged.parts.glob("*.npz")) and len(list(staged.parts.glob("seg-*.json"))) == 3
    staged.checkpoint_bytes = 1 << 40
    staged.save("v4", features(4), {"views": 1})
    staged.save("v1", features(1), {"views": 1})  # as if killed after a checkpoint, before it dropped its parts
    staged.close()  # the run dies here
    resumed = StagedStore(path, "features", HEADER)
    assert resumed.done_ids() == {"v1", "v2", "v3", "v4"} and resumed.staged_ids() == {"v4"}
    resumed.save("v5", features(5), {"views": 1})
    meta = resumed.finalize({"manifest": "m.json", "shard": None})
    assert meta["num_segments"] == 4 and not resumed.parts.exists()  # 3 linked checkpoints + the last parts
    build(tmp_path / f"ref{suffix}", ["v1", "v2", "v3", "v4", "v5"])
    assert_same_content(tmp_path / f"ref{suffix}", path)
    assert verify_store(path) == []


def test_the_checkpoint_threshold_grows_with_the_store(tmp_path, monkeypatch):
    from hoitool.store import staging

    monkeypatch.setattr(staging, "CHECKPOINT_MIN_BYTES", 1)
    path = tmp_path / "f.h5"
    build(path, [f"v{i}" for i in range(1, 9)])
    staged = StagedStore(path, "features", HEADER)
    raw = store_info(path)["bytes_uncompressed"]
    assert raw > 0 and staged._threshold() == int(0.05 * raw)  # parts stay a small fraction of the store
    staged.close()


def test_a_run_that_says_how_many_videos_it_stages_sizes_checkpoints_to_the_final_store(tmp_path, monkeypatch):
    """Each checkpoint is ~4% of the final raw bytes: ~25 segments at any scale (the geometric rule alone, from a
    tiny minimum, makes nearly one per video here), and the content is that of a build without checkpoints."""
    from hoitool.store import staging

    monkeypatch.setattr(staging, "CHECKPOINT_MIN_BYTES", 1)  # what 64 MiB is to a realistic store
    ids = [f"v{i}" for i in range(1, 121)]
    counts = {}
    for expected in (len(ids), 0):
        path = tmp_path / f"f{expected}.h5"
        staged = StagedStore(path, "features", HEADER)
        thresholds, checkpoint = [], staged.checkpoint

        def recorded(checkpoint=checkpoint, staged=staged, thresholds=thresholds):
            thresholds.append(staged._threshold())
            checkpoint()

        staged.checkpoint = recorded
        with staged.writer(expected=expected) as write:
            for video_id in ids:
                write(video_id, features(int(video_id[1:]), dim=512), {"views": 1})  # npz overhead ~10%
        counts[expected] = staged.finalize({"manifest": "m.json", "shard": None})["num_segments"]
        if expected:  # the first checkpoint, with nothing in segments yet: 4% of what the run will have staged
            raw = store_info(path)["bytes_uncompressed"]
            assert thresholds[0] == int(staging.CHECKPOINT_PROJECTED_FRACTION * raw)
    assert 20 <= counts[len(ids)] <= 30 and counts[0] > 40, counts
    staged = StagedStore(tmp_path / "ref.h5", "features", HEADER)
    staged.checkpoint_bytes = 1 << 40  # no checkpoint: one segment
    for video_id in ids:
        staged.save(video_id, features(int(video_id[1:]), dim=512), {"views": 1})
    staged.finalize({"manifest": "m.json", "shard": None})
    assert read_index(tmp_path / "ref.h5")["hoitool"]["num_segments"] == 1
    assert_same_content(tmp_path / "ref.h5", tmp_path / f"f{len(ids)}.h5")
    assert_same_content(tmp_path / "ref.h5", tmp_path / "f0.h5")


def test_the_checkpoint_size_can_be_fixed_by_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOITOOL_CHECKPOINT_BYTES", "1")
    staged = StagedStore(tmp_path / "f.h5", "features", HEADER)
    staged.save("v1", features(1), {"views": 1})
    staged.save("v2", features(2), {"views": 1})
    assert not list(staged.parts.glob("*.npz")) and len(list(staged.parts.glob("seg-*.json"))) == 2
    staged.close()
    monkeypatch.setenv("HOITOOL_CHECKPOINT_BYTES", "lots")
    with pytest.raises(UsageError, match="HOITOOL_CHECKPOINT_BYTES='lots'"):
        StagedStore(tmp_path / "g.h5", "features", HEADER)
    assert not (tmp_path / ".g.h5.lock").exists()


def test_a_zarr_store_with_nested_shard_folders_is_still_read_grown_and_ours(tmp_path, monkeypatch):
    """Stores written before the "." chunk keys (``<array>/c/0/0/0/0``) read, grow and can be --force-replaced."""
    from hoitool.store import segments

    path = tmp_path / "f.zarr"
    monkeypatch.setattr(segments, "CHUNK_KEYS", {"name": "default", "separator": "/"})
    build(path, ["v1", "v2"])
    monkeypatch.undo()
    assert (path / SEGMENTS / "seg-000001.zarr" / "nodes" / "c" / "0").is_dir()
    build(path, ["v3"])
    assert (path / SEGMENTS / "seg-000002.zarr" / "nodes" / "c.0.0.0.0.0").is_file()
    build(tmp_path / "ref.zarr", ["v1", "v2", "v3"])
    assert_same_content(tmp_path / "ref.zarr", path)
    assert verify_store(path) == []
    StagedStore(path, "features", {**HEADER, "upstream": "new"}, force=True).close()  # ours: replaced
    assert not path.exists()
