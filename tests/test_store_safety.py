"""Stores never touch what is not theirs, are never read damaged, merge only whole shard sets, and say what a fault kept.

Issue 6, store side: ownership checks before ``--force``, digest-checked reads, shard-aware
``cache merge`` with ``--allow-partial``, and one-line file-system faults during extraction.
"""

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from helpers import run_cli, run_cli_raw
from test_extract import FEATURE_ARGS, hoitool
from test_store import HEADER, build, segment_of
from test_store import features as video_arrays
from test_store_segments import build_legacy

from hoitool.errors import UsageError
from hoitool.store import StagedStore, open_store
from hoitool.store.reader import DamagedStoreError
from hoitool.store.tools import compact_store, merge_stores, store_info, verify_store

BOXES_ARGS = ["--source", "dataset", "--frames", "4", "--top-k", "4", "--workers", "0"]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` (a root may be a file) with the sha256 of its bytes; folders as 'dir'."""
    state = {}
    for root in roots:
        for path in sorted([root, *root.rglob("*")]) if root.is_dir() else [root]:
            state[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    return errors[0]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic dataset, its boxes store and both halves of a 2-way shard split of it."""
    from hoitool.config import resolve_config
    from hoitool.datasets.synthetic import generate
    from hoitool.extract.boxes import BOXES_DEFAULTS, extract_boxes

    root = tmp_path_factory.mktemp("safety")
    generate(root / "data", videos_per_class=1, num_frames=8, size=64, seed=3)
    config = resolve_config(
        BOXES_DEFAULTS, None, {"source": "dataset", "frames": 4, "top_k": 4, "runtime.workers": 0}, []
    )
    for shard in (None, (0, 2), (1, 2)):  # in-process: three CLI start-ups would take most of this file's time
        extract_boxes(root / "data", root / ("boxes.h5" if shard is None else "b.h5"), config, shard=shard)
    return root


# -- 1. ownership: --force acts only on hoitool's own stores ------------------------------------------------------------
def _foreign_target(kind: str, root: Path, suffix: str, synthetic: Path) -> Path:
    """An output path holding something hoitool did not write (or a store of the other kind)."""
    if kind == "dataset":  # a prepared dataset folder that happens to carry a store suffix
        target = root / "ds.zarr"
        shutil.copytree(synthetic / "data", target)
    elif kind == "folder":
        target = root / f"mine{suffix}"
        target.mkdir()
        (target / "thesis.tex").write_text("\\section{Results}\n")
        (target / "data.csv").write_text("a,b\n1,2\n")
    elif kind == "foreign-h5":
        target = root / "mine.h5"
        with h5py.File(target, "w") as handle:
            handle["measurements"] = np.arange(10)
    elif kind == "store-plus-foreign":  # a Zarr store of ours into which a user dropped a file
        target = root / "grown.zarr"
        build(target, ["v1"])
        (target / "README.txt").write_text("my notes\n")
    elif kind == "foreign-parts":
        target = root / "half.h5"
        (root / "half.h5.parts").mkdir()
        (root / "half.h5.parts" / "results.csv").write_text("x\n")
    else:  # "other-kind": a hoitool features store at the output of a boxes stage
        target = root / "feats.h5"
        build(target, ["v1"])
    return target


TARGETS = ["dataset", "folder", "foreign-h5", "store-plus-foreign", "foreign-parts", "other-kind"]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("command", ["boxes", "features", "merge"])
def test_force_never_touches_what_hoitool_did_not_write(synthetic, tmp_path, target, command, capsys):
    out = _foreign_target(target, tmp_path, ".zarr" if command != "merge" else ".h5", synthetic)
    if command == "boxes":
        argv = ["extract", "boxes", synthetic / "data", "--out", out, *BOXES_ARGS, "--force"]
    elif command == "features":
        argv = ["extract", "features", synthetic / "boxes.h5", "--out", out, *FEATURE_ARGS, "--force"]
        if target == "other-kind":  # a boxes store where a features store is to be written
            out = tmp_path / "boxes-at-features-out.h5"
            shutil.copytree(synthetic / "boxes.h5", out)
            argv[4] = out
    else:
        argv = [
            "cache",
            "merge",
            synthetic / "b.shard0-of-2.h5",
            synthetic / "b.shard1-of-2.h5",
            "--out",
            out,
            "--force",
        ]
        if target == "other-kind":
            out = tmp_path / "feats-at-boxes-merge.h5"
            build(out, ["v1"])
            argv[-2] = out
    before = snapshot(tmp_path)
    code, _, err = run_cli_raw(argv, capsys)
    assert code == 2, err
    line = one_error_line(err)
    assert "nothing was touched" in line and str(out.name) in line
    after = snapshot(tmp_path)
    assert {key: value for key, value in after.items() if key in before} == before  # every file there, byte-identical
    assert not [key for key in after if key not in before]  # and nothing new (no lock file, no config)


def test_force_still_replaces_a_store_hoitool_wrote(synthetic, tmp_path, capsys):
    out = tmp_path / "boxes.zarr"
    code, _, err = run_cli(["extract", "boxes", synthetic / "data", "--out", out, *BOXES_ARGS], capsys)
    assert code == 0, err
    code, _, err = run_cli(
        [
            "extract",
            "boxes",
            synthetic / "data",
            "--out",
            out,
            *BOXES_ARGS[:-4],
            "--top-k",
            "2",
            "--workers",
            "0",
            "--force",
        ],
        capsys,
    )
    assert code == 0, err
    assert open_store(out).read(open_store(out).video_ids[0])["boxes"].shape[2] == 2


def test_stale_temporaries_and_unfinished_parts_of_ours_are_accepted(tmp_path):
    path = tmp_path / "f.h5"
    staged = StagedStore(path, "features", HEADER)
    staged.save("v1", video_arrays(1))
    staged.close()
    (tmp_path / ".f.h5.4242.tmp").write_bytes(b"half a store")  # a killed finalize / merge
    resumed = StagedStore(path, "features", HEADER)
    assert resumed.done_ids() == {"v1"} and not (tmp_path / ".f.h5.4242.tmp").exists()
    resumed.close()


def test_a_checkpoint_segment_killed_inside_a_zarr_write_is_ours_and_goes_on_resume(tmp_path, monkeypatch):
    """kill -9 while zarr-python writes a key leaves ``<key>.<uuid hex>.partial`` in the temporary segment (seen in CI).

    That file is zarr's own atomic-write temporary (zarr.storage LocalStore); the same name in a finished
    segment, or any other name in the temporary, is still refused.
    """
    import uuid

    from hoitool.store.ownership import why_parts_not_ours

    monkeypatch.setenv("HOITOOL_CHECKPOINT_BYTES", "1")  # a checkpoint segment after every video
    path = tmp_path / "f.zarr"
    staged = StagedStore(path, "features", HEADER)
    staged.save("v1", video_arrays(1))
    staged.close()
    parts = path.with_name("f.zarr.parts")
    [finished] = parts.glob("seg-*.zarr")
    killed = parts / f".seg-000002.zarr.{4242}.tmp"
    shutil.copytree(finished, killed)
    shard = next(file for file in (killed / "nodes").rglob("c*") if file.is_file())
    partial = shard.with_suffix(f".{uuid.uuid4().hex}.partial")  # how zarr names it
    partial.write_bytes(b"half a shard")
    (killed / f"zarr.{uuid.uuid4().hex}.partial").write_bytes(b"{")  # a half-written zarr.json
    assert why_parts_not_ours(parts, "features") is None

    stray = finished / "nodes" / partial.name  # not in a temporary: not a file hoitool's writer leaves
    stray.write_bytes(b"x")
    assert "did not write" in why_parts_not_ours(parts, "features")
    stray.unlink()
    other = killed / "nodes" / "notes.partial"
    other.write_bytes(b"x")
    assert "did not write" in why_parts_not_ours(parts, "features")
    other.unlink()

    resumed = StagedStore(path, "features", HEADER)
    assert resumed.done_ids() == {"v1"} and not killed.exists()
    resumed.save("v2", video_arrays(2))
    resumed.finalize({})
    assert open_store(path).video_ids == ["v1", "v2"]


# -- 3. checked reads -------------------------------------------------------------------------------------------------
def _zarr_chunk(path: Path, video: str, array: str) -> Path:
    """The shard file that holds ``video``'s row of ``array`` (it holds the other videos of its segment too)."""
    segment, _ = segment_of(path, video)
    chunks = [file for file in (segment / array).rglob("*") if file.is_file() and file.name != "zarr.json"]
    assert len(chunks) == 1
    return chunks[0]


def _hdf5_chunk(path: Path, video: str, array: str) -> tuple[Path, int, int]:
    segment, row = segment_of(path, video)
    with h5py.File(segment, "r") as handle:
        dataset = handle[array]
        info = dataset.id.get_chunk_info_by_coord((row,) + (0,) * (dataset.ndim - 1))
    return segment, info.byte_offset, info.size


def build_apart(path: Path, ids) -> None:
    """One commit (one segment) per video, so damaging a segment damages that video only."""
    for video_id in ids:
        build(path, [video_id])


def damage(path: Path, how: str) -> None:
    """Damage video v2 of a store built by ``build_apart`` the way a disk, a user or a sync tool does."""
    segment, row = segment_of(path, "v2")
    if how == "zarr-chunk":
        _zarr_chunk(path, "v2", "nodes").unlink()  # Zarr returns the fill value (zeros) for it
    elif how == "zarr-array":
        shutil.rmtree(segment / "nodes")
    elif how == "hdf5-chunk":
        segment, offset, size = _hdf5_chunk(path, "v2", "nodes")
        with open(segment, "r+b") as handle:
            handle.seek(offset + size // 2)
            handle.write(b"\xff" * 16)
    elif how == "hdf5-edit":  # an in-place edit with h5py: valid data, different from what was written
        with h5py.File(segment, "r+") as handle:
            handle["nodes"][row, 0, 0, 0, 0] += 1
    elif how == "hdf5-array":
        with h5py.File(segment, "r+") as handle:
            del handle["valid"]


DAMAGES = {"zarr-chunk": ".zarr", "zarr-array": ".zarr", "hdf5-chunk": ".h5", "hdf5-edit": ".h5", "hdf5-array": ".h5"}


@pytest.mark.parametrize("how", DAMAGES)
def test_a_damaged_video_is_never_read_as_data(tmp_path, how):
    path = tmp_path / f"f{DAMAGES[how]}"
    build_apart(path, ["v1", "v2", "v3"])
    damage(path, how)
    reader = open_store(path)
    np.testing.assert_array_equal(reader.read("v1")["nodes"], video_arrays(1)["nodes"].astype(np.float16))
    for names in (None, ["nodes", "valid"]):
        with pytest.raises(DamagedStoreError) as caught:
            reader.read("v2", names)
        message = str(caught.value)
        assert str(path) in message and "'v2'" in message and "cache verify" in message and "\n" not in message
    assert any("v2" in problem for problem in verify_store(path))


def test_a_subset_read_checks_only_what_it_reads_and_old_stores_are_checked_whole(tmp_path):
    path = tmp_path / "f.h5"
    build(path, ["v1", "v2"])
    segment, row = segment_of(path, "v2")
    with h5py.File(segment, "r+") as handle:
        handle["boxes"][row, 0, 0, 0, 0] += 1
    reader = open_store(path)
    assert reader.read("v2", ["nodes"])["nodes"].shape == (1, 4, 3, 8)  # boxes not read: not checked
    with pytest.raises(DamagedStoreError, match="boxes"):
        reader.read("v2", ["nodes", "boxes"])
    reader.close()
    path = tmp_path / "old.h5"
    build_legacy(path, ["v1", "v2"], with_array_digests=False)  # a store written before per-array digests existed
    with h5py.File(path, "r+") as handle:
        handle["videos/v2/boxes"][0, 0, 0, 0] += 1
    reader = open_store(path)
    assert set(reader.read("v1", ["nodes"])) == {"nodes"}
    with pytest.raises(DamagedStoreError, match="digest"):
        reader.read("v2", ["nodes"])


def test_growing_or_compacting_a_store_does_not_launder_a_damaged_video(tmp_path):
    path = tmp_path / "f.zarr"
    build_apart(path, ["v1", "v2"])
    damage(path, "zarr-chunk")
    build(path, ["v3"])  # growing adds a segment: the damaged one keeps its recorded digests
    with pytest.raises(DamagedStoreError, match="'v2'"):
        open_store(path).read("v2")
    before = snapshot(path)
    with pytest.raises(DamagedStoreError, match="'v2'"):
        compact_store(path)  # rewriting reads every video checked: v2 never gets a fresh digest
    assert snapshot(path) == before  # the store is left as it was
    old = tmp_path / "old.zarr"
    build_legacy(old, ["v1", "v2"])
    shutil.rmtree(old / "videos" / "v2" / "nodes" / "c")
    with pytest.raises(DamagedStoreError, match="'v2'"):
        build(old, ["v3"])  # a schema-1 store is rewritten once: checked, too
    assert open_store(old).video_ids == ["v1", "v2"]


@pytest.mark.slow
def test_features_from_a_damaged_boxes_store_record_that_video_as_failed(synthetic, tmp_path):
    boxes = tmp_path / "boxes.h5"
    shutil.copytree(synthetic / "boxes.h5", boxes)
    victim = open_store(boxes).video_ids[1]
    segment, row = segment_of(boxes, victim)
    with h5py.File(segment, "r+") as handle:
        handle["boxes"][row, 0, 0, 0, 0] += 3
    result = hoitool("extract", "features", boxes, "--out", tmp_path / "f.h5", *FEATURE_ARGS, check=3)
    failures = [json.loads(line) for line in (tmp_path / "f.h5.failures.jsonl").read_text().splitlines()]
    assert [record["video"] for record in failures] == [victim]
    assert "damaged" in failures[0]["error"] and "cache verify" in failures[0]["error"]
    assert victim not in open_store(tmp_path / "f.h5").video_ids and "Traceback" not in result.stderr


@pytest.mark.parametrize("workers", ["0", "1"])
def test_training_on_a_damaged_store_fails_in_one_line(tmp_path, workers, capsys):
    from test_train import make_features

    features = make_features(tmp_path, suffix=".zarr")
    victim = open_store(features).video_ids[0]
    import zarr

    segment, row = segment_of(features, victim)
    nodes = zarr.open_array(str(segment / "nodes"), mode="r+")
    nodes[row] = nodes[row] + 1  # an in-place edit of that video only
    code, _, err = run_cli_raw(
        [
            "train-teacher",
            features,
            "--view",
            "global",
            "--out",
            tmp_path / "run",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--workers",
            workers,
            "--set",
            "model.hidden=8",
            "--set",
            "model.heads=1",
        ],
        capsys,
    )
    assert code == 1, err
    line = one_error_line(err)
    assert str(features) in line and repr(victim) in line and "cache verify" in line


@pytest.mark.parametrize("damage_kind", ["garbage", "truncated", "index-garbage", "index-truncated"])
def test_cache_info_and_verify_on_a_corrupt_file_are_one_line(tmp_path, damage_kind, capsys):
    good = tmp_path / "good.h5"
    build_legacy(good, ["v1", "v2"])
    broken = tmp_path / "broken.h5"
    if damage_kind.startswith("index"):  # a schema-2 store whose index was overwritten or cut short
        build(broken, ["v1", "v2"])
        index = broken / "index.json"
        data = index.read_bytes()
        index.write_bytes(
            np.random.default_rng(0).bytes(4096) if damage_kind == "index-garbage" else data[: len(data) // 2]
        )
    else:
        data = good.read_bytes()
        broken.write_bytes(np.random.default_rng(0).bytes(4096) if damage_kind == "garbage" else data[: len(data) // 2])
    for command in ("info", "verify"):
        code, _, err = run_cli_raw(["cache", command, broken], capsys)
        assert code in (1, 2) and str(broken) in one_error_line(err)


def test_cache_info_counts_damaged_videos_and_verify_names_them(tmp_path, capsys):
    path = tmp_path / "f.zarr"
    build(path, ["v1", "v2"])
    damage(path, "zarr-chunk")
    assert store_info(path)["videos_unreadable"] == []  # it reads as zeros: only the digest tells
    code, out, err = run_cli(["cache", "verify", path], capsys)
    assert code == 1 and "'v2'" in out and "digest" in out


# -- 4. merge knows its shards ------------------------------------------------------------------------------------------
def test_merge_refuses_an_incomplete_or_mixed_shard_set(tmp_path):
    build(tmp_path / "s0.h5", ["v1", "v3"], shard=(0, 3))
    build(tmp_path / "s1.h5", ["v2"], shard=(1, 3))
    build(tmp_path / "t1.h5", ["v4"], shard=(1, 2))
    build(tmp_path / "plain.h5", ["v5"])
    cases = {
        ("s0.h5",): "1/3, 2/3 missing",
        ("s0.h5", "s1.h5"): "2/3 missing",
        ("s0.h5", "t1.h5"): "different splits",
        ("s0.h5", "plain.h5"): "not written with --shard",
    }
    for names, needle in cases.items():
        with pytest.raises(UsageError, match=needle) as caught:
            merge_stores([tmp_path / name for name in names], tmp_path / "m.h5")
        assert "--allow-partial" in str(caught.value)
    with pytest.raises(UsageError, match="given twice"):
        merge_stores([tmp_path / "s0.h5", tmp_path / "s0.h5"], tmp_path / "m.h5", allow_partial=True)
    assert not (tmp_path / "m.h5").exists()


def test_allow_partial_marks_the_store_and_every_reader_warns(tmp_path, capsys):
    build(tmp_path / "s0.h5", ["v1", "v3"], shard=(0, 2))
    code, _, err = run_cli(["cache", "merge", tmp_path / "s0.h5", "--out", tmp_path / "m.h5"], capsys)
    assert code == 2 and "1/2 missing" in err and not (tmp_path / "m.h5").exists()
    code, _, err = run_cli(
        ["cache", "merge", tmp_path / "s0.h5", "--out", tmp_path / "m.h5", "--allow-partial"], capsys
    )
    assert code == 0 and "partial" in err
    assert store_info(tmp_path / "m.h5")["partial"]["missing_shards"] == ["1/2"]
    code, out, _ = run_cli(["cache", "info", tmp_path / "m.h5"], capsys)
    assert code == 0 and "partial" in out and "1/2" in out
    from hoitool.store import reader as reader_module

    reader_module._warned.clear()
    capsys.readouterr()
    open_store(tmp_path / "m.h5")
    open_store(tmp_path / "m.h5")
    assert capsys.readouterr().err.count("is a partial store") == 1  # once per process, at open: every stage gets it


def test_rerun_of_a_completed_merge_is_a_no_op_and_stale_temporaries_go(tmp_path, capsys):
    build(tmp_path / "s0.zarr", ["v1", "v3"], shard=(0, 2))
    build(tmp_path / "s1.zarr", ["v2"], shard=(1, 2))
    argv = ["cache", "merge", tmp_path / "s0.zarr", tmp_path / "s1.zarr", "--out", tmp_path / "m.zarr"]
    stale = tmp_path / ".m.zarr.999999.tmp"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    assert run_cli(argv, capsys)[0] == 0
    assert not stale.exists()
    before = snapshot(tmp_path / "m.zarr")
    code, _, err = run_cli(argv, capsys)
    assert code == 0 and "already merged" in err and snapshot(tmp_path / "m.zarr") == before
    build(tmp_path / "s1.zarr", ["v4"], shard=(1, 2))  # an input changed: a plain re-run is refused
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--force" in err
    assert run_cli([*argv, "--force"], capsys)[0] == 0
    assert open_store(tmp_path / "m.zarr").video_ids == ["v1", "v2", "v3", "v4"]


# -- 5. ordinary faults while writing -----------------------------------------------------------------------------------
def test_disk_full_during_extraction_keeps_finished_videos_and_resumes(synthetic, tmp_path, monkeypatch, capsys):
    reference = tmp_path / "ref.h5"
    assert run_cli(["extract", "boxes", synthetic / "data", "--out", reference, *BOXES_ARGS], capsys)[0] == 0
    out = tmp_path / "b.h5"
    real_save, calls = StagedStore.save, []

    def save(self, video_id, arrays, attrs=None):
        calls.append(video_id)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.parts / "x.npz"))
        real_save(self, video_id, arrays, attrs)

    monkeypatch.setattr(StagedStore, "save", save)
    code, _, err = run_cli_raw(["extract", "boxes", synthetic / "data", "--out", out, *BOXES_ARGS], capsys)
    line = one_error_line(err)
    assert code == 1 and "no space left" in line and "2 finished videos are kept" in line and "again to resume" in line
    assert len(list((tmp_path / "b.h5.parts").glob("*.npz"))) == 2 and not out.exists()
    monkeypatch.setattr(StagedStore, "save", real_save)
    code, _, err = run_cli(["extract", "boxes", synthetic / "data", "--out", out, *BOXES_ARGS], capsys)
    assert code == 0 and "2 videos already done" in err
    first, second = open_store(reference), open_store(out)
    assert first.fingerprint == second.fingerprint and first.video_ids == second.video_ids


def test_disk_full_while_finalizing_leaves_no_half_store(tmp_path, monkeypatch):
    from hoitool.store import segments

    path = tmp_path / "f.zarr"
    build(path, ["v1"])
    before = snapshot(path)
    real = segments.array_digests

    def full(arrays):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segments, "array_digests", full)
    with pytest.raises(OSError):
        build(path, ["v2"])
    monkeypatch.setattr(segments, "array_digests", real)
    assert snapshot(path) == before and not list(tmp_path.glob(".f.zarr.*.tmp"))
    build(path, ["v2"])
    assert open_store(path).video_ids == ["v1", "v2"]


def test_unwritable_output_folder_is_one_line_and_writes_nothing(synthetic, tmp_path, monkeypatch, capsys):
    from hoitool.store import staging

    def denied(lock_file, busy, **options):
        raise PermissionError(errno.EACCES, "Permission denied", str(lock_file))

    monkeypatch.setattr(staging, "exclusive_lock", denied)
    out = tmp_path / "ro" / "b.h5"
    code, _, err = run_cli_raw(["extract", "boxes", synthetic / "data", "--out", out, *BOXES_ARGS], capsys)
    assert code == 2 and str(out.parent) in one_error_line(err)
    assert not out.exists() and not list(tmp_path.rglob("*.yaml"))


# -- 2. workers die with their parent -------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")
@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
@pytest.mark.parametrize("stage", ["boxes", "features"])
def test_kill_9_of_the_main_process_alone_takes_its_workers_and_the_rerun_is_identical(tmp_path, stage, suffix):
    """SIGKILL only the main pid while its 2 DataLoader workers decode; they must go, the re-run must not be refused."""
    import signal
    import time

    from hoitool.datasets.synthetic import generate

    generate(tmp_path / "data", videos_per_class=2, num_frames=16, size=64, seed=5)
    if stage == "boxes":
        args = [
            "extract",
            "boxes",
            tmp_path / "data",
            "--source",
            "rpn",
            "--weights",
            "random",
            "--frames",
            "4",
            "--top-k",
            "4",
            "--device",
            "cpu",
            "--set",
            "model.min_size=64",
            "--set",
            "model.max_size=96",
        ]
    else:
        hoitool("extract", "boxes", tmp_path / "data", "--out", tmp_path / "boxes.h5", *BOXES_ARGS, check=0)
        args = ["extract", "features", tmp_path / "boxes.h5", *FEATURE_ARGS[:-4], "--set", "short_side=64"]
    hoitool(*args, "--out", tmp_path / f"ref{suffix}", "--workers", "0", check=0)
    out = tmp_path / f"killed{suffix}"
    child = subprocess.Popen(
        [sys.executable, "-m", "hoitool", "--quiet", *map(str, args), "--out", str(out), "--workers", "2"],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while child.poll() is None and time.monotonic() < deadline:  # workers started and decoding, first video staged
        if len(_children(child.pid)) >= 2 and list((tmp_path / f"killed{suffix}.parts").glob("*.npz")):
            break
        time.sleep(0.01)
    workers = _children(child.pid)
    assert child.poll() is None and len(workers) >= 2, "the kill must land while the workers run"
    child.send_signal(signal.SIGKILL)  # the main process only, as `kill -9 PID` or the OOM killer does
    assert child.wait() == -signal.SIGKILL
    gone_by = time.monotonic() + 3
    while any(_alive(pid) for pid in workers) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "orphaned DataLoader workers outlived their parent"
    result = hoitool(*args, "--out", out, "--workers", "2")  # at once: must not be refused as "another process"
    assert result.returncode == 0, result.stderr
    reference, resumed = open_store(tmp_path / f"ref{suffix}"), open_store(out)
    assert resumed.video_ids == reference.video_ids and resumed.fingerprint == reference.fingerprint
    for video_id in reference.video_ids:
        left, right = reference.read(video_id), resumed.read(video_id)
        assert left.keys() == right.keys()
        for name in left:
            np.testing.assert_array_equal(left[name], right[name], err_msg=f"{video_id}/{name}")


def test_each_array_is_hashed_once_per_process_and_a_fresh_reader_checks_again(tmp_path, monkeypatch):
    from hoitool.store import reader as reader_module

    path = tmp_path / "f.zarr"
    build(path, ["v1", "v2"])
    hashed = []
    real = reader_module.array_digests
    monkeypatch.setattr(reader_module, "array_digests", lambda arrays: hashed.extend(arrays) or real(arrays))
    reader = open_store(path)
    for _ in range(3):  # three epochs
        reader.read("v1", ["nodes", "valid"])
    reader.read("v1", ["nodes", "boxes"])
    assert sorted(hashed) == ["boxes", "nodes", "valid"]
    damage(path, "zarr-chunk")
    with pytest.raises(DamagedStoreError):
        open_store(path).read("v2", ["nodes"])  # a new process / reader hashes what it reads
    shutil.rmtree(segment_of(path, "v1")[0] / "valid")
    with pytest.raises(DamagedStoreError, match="'valid' missing"):
        reader.read("v1", ["nodes", "valid"])  # already verified, but a missing array is still seen


@pytest.mark.slow
def test_extract_features_from_a_partial_boxes_store_warns(synthetic, tmp_path):
    partial = tmp_path / "partial-boxes.h5"
    hoitool("cache", "merge", synthetic / "b.shard0-of-2.h5", "--out", partial, "--allow-partial", check=0)
    result = hoitool("extract", "features", partial, "--out", tmp_path / "f.h5", *FEATURE_ARGS, check=0)
    assert f"warning: {partial} is a partial store" in " ".join(result.stderr.split())
    assert "missing shards 1/2" in " ".join(result.stderr.split())
    features = open_store(tmp_path / "f.h5")
    assert features.partial["missing_shards"] == partial_missing(partial)
    assert features.partial["upstream"] == str(partial.resolve())  # training on it warns in turn


def partial_missing(path: Path) -> list:
    return open_store(path).partial["missing_shards"]
