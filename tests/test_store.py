"""The store protocol: staging, resume, refusal of changed upstream, merge, verify, both backends."""

import numpy as np
import pytest

from hoitool.errors import StaleArtifactError, UsageError
from hoitool.store import StagedStore, open_store
from hoitool.store.tools import merge_stores, store_info, verify_store

HEADER = {"config": {"frames": 4}, "upstream": "abc"}


def features(seed: int, views=1, frames=4, boxes=3, dim=8) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "frame_indices": np.arange(views * frames).reshape(views, frames),
        "frame_valid": np.ones((views, frames), bool),
        "frame_size": np.array([48, 64]),
        "boxes": rng.uniform(0, 40, (views, frames, boxes, 4)).astype(np.float32),
        "valid": rng.uniform(size=(views, frames, boxes)) > 0.3,
        "nodes": rng.normal(size=(views, frames, boxes, dim)),
    }


def build(path, ids, header=HEADER, force=False, shard=None):
    staged = StagedStore(path, "features", header, force=force)
    with staged.writer() as write:
        for video_id in ids:
            write(video_id, features(int(video_id[1:])), {"views": 1})
    return staged.finalize({"manifest": "m.json", "shard": list(shard) if shard else None})


def segment_of(path, video_id):
    """``(segment path, row)`` of a video in a schema-2 store (tests damage or edit it there)."""
    from hoitool.store.schema import video_key
    from hoitool.store.segments import SEGMENTS, SegmentedBackend

    name, row = SegmentedBackend(path).entries[video_key(video_id)]
    return path / SEGMENTS / name, row


def assert_same_content(a, b):
    first, second = open_store(a), open_store(b)
    assert first.video_ids == second.video_ids
    assert first.fingerprint == second.fingerprint
    for video_id in first.video_ids:
        left, right = first.read(video_id), second.read(video_id)
        assert left.keys() == right.keys()
        for name in left:
            np.testing.assert_array_equal(left[name], right[name])
            assert left[name].dtype == right[name].dtype


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_roundtrip_and_schema_dtypes(tmp_path, suffix):
    path = tmp_path / f"feats{suffix}"
    meta = build(path, ["v1", "v2"])
    reader = open_store(path)
    assert reader.video_ids == ["v1", "v2"]
    assert reader.fingerprint == meta["fingerprint"]
    arrays = reader.read("v2")
    assert arrays["nodes"].dtype == np.float16 and arrays["valid"].dtype == bool
    np.testing.assert_array_equal(arrays["nodes"], features(2)["nodes"].astype(np.float16))
    assert not (tmp_path / f"feats{suffix}.parts").exists()
    assert verify_store(path) == []


def test_hdf5_and_zarr_hold_identical_arrays(tmp_path):
    build(tmp_path / "a.h5", ["v1", "v2", "v3"])
    build(tmp_path / "a.zarr", ["v1", "v2", "v3"])
    assert_same_content(tmp_path / "a.h5", tmp_path / "a.zarr")


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_interrupted_run_resumes_to_identical_store(tmp_path, suffix):
    reference = tmp_path / f"ref{suffix}"
    build(reference, ["v1", "v2", "v3", "v4"])
    path = tmp_path / f"run{suffix}"
    staged = StagedStore(path, "features", HEADER)
    staged.save("v1", features(1))
    staged.save("v3", features(3))
    (staged.parts / ".v4.npz.junk.tmp").write_bytes(b"half written")  # a crash mid-write leaves a temp file
    del staged
    resumed = StagedStore(path, "features", HEADER)
    assert resumed.done_ids() == {"v1", "v3"}
    assert not list(resumed.parts.glob(".*.tmp"))
    resumed.close()
    build(path, ["v2", "v4"])
    assert_same_content(reference, path)


def test_finished_store_grows_with_new_videos_identically(tmp_path):
    build(tmp_path / "ref.h5", ["v1", "v2", "v3"])
    build(tmp_path / "grow.h5", ["v1"])
    build(tmp_path / "grow.h5", ["v2", "v3"])
    assert_same_content(tmp_path / "ref.h5", tmp_path / "grow.h5")


def test_changed_upstream_or_config_is_refused_unless_forced(tmp_path):
    path = tmp_path / "f.h5"
    build(path, ["v1"])
    with pytest.raises(StaleArtifactError, match="upstream artifact changed"):
        StagedStore(path, "features", {**HEADER, "upstream": "changed"})
    with pytest.raises(StaleArtifactError, match="different config"):
        StagedStore(path, "features", {**HEADER, "config": {"frames": 8}})
    forced = StagedStore(path, "features", {**HEADER, "upstream": "changed"}, force=True)
    assert forced.done_ids() == set()


def test_failures_are_recorded_and_retried(tmp_path):
    path = tmp_path / "f.h5"
    staged = StagedStore(path, "features", HEADER)
    staged.save("v1", features(1))
    staged.fail("v2", "v2.mp4: truncated")
    meta = staged.finalize({})
    assert meta["failed"] == [{"video": "v2", "error": "v2.mp4: truncated"}]
    assert "truncated" in (tmp_path / "f.h5.failures.jsonl").read_text()
    build(path, ["v2"])  # fixed and re-run: the failure is gone
    assert open_store(path).attrs["failed"] == []
    assert not (tmp_path / "f.h5.failures.jsonl").exists()


def test_merge_of_shards_equals_one_run(tmp_path):
    build(tmp_path / "one.zarr", ["v1", "v2", "v3", "v4", "v5"])
    build(tmp_path / "s0.zarr", ["v1", "v3", "v5"], shard=(0, 2))
    build(tmp_path / "s1.zarr", ["v2", "v4"], shard=(1, 2))
    merge_stores([tmp_path / "s0.zarr", tmp_path / "s1.zarr"], tmp_path / "merged.zarr")
    assert_same_content(tmp_path / "one.zarr", tmp_path / "merged.zarr")
    build(tmp_path / "other.zarr", ["v6"], header={**HEADER, "upstream": "zzz"}, shard=(1, 2))
    with pytest.raises(UsageError, match="different config or upstream"):
        merge_stores([tmp_path / "s0.zarr", tmp_path / "other.zarr"], tmp_path / "bad.zarr")
    with pytest.raises(UsageError, match="in both"):
        merge_stores([tmp_path / "s0.zarr", tmp_path / "one.zarr"], tmp_path / "dup.zarr", allow_partial=True)


def test_verify_detects_modified_content(tmp_path):
    import h5py

    path = tmp_path / "f.h5"
    build(path, ["v1", "v2"])
    segment, row = segment_of(path, "v2")
    with h5py.File(segment, "r+") as handle:
        handle["nodes"][row, 0, 0, 0, 0] = np.nan
    problems = verify_store(path)
    assert any("non-finite" in problem for problem in problems)
    assert any("digest" in problem for problem in problems)


def test_info_reports_counts_shapes_and_bytes(tmp_path):
    path = tmp_path / "f.zarr"
    build(path, ["v1", "v2"])
    info = store_info(path)
    assert info["videos_done"] == 2 and info["videos_failed"] == 0
    assert info["shapes"]["nodes"] == [[1, 4, 3, 8]] and info["dtypes"]["nodes"] == "float16"
    assert info["bytes_on_disk"] > 0 and info["compression_ratio"] > 0


def test_second_writer_on_the_same_store_is_refused(tmp_path):
    path = tmp_path / "f.h5"
    first = StagedStore(path, "features", HEADER)
    with pytest.raises(UsageError, match="another process"):
        StagedStore(path, "features", HEADER)
    del first


def test_unknown_suffix_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="unknown store suffix"):
        StagedStore(tmp_path / "f.npy", "features", HEADER)
