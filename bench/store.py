"""Store benchmark (issue 11): what staging, commits, resumes, merges and compaction cost, per video and per GB.

Prints figures; asserts nothing. Two scenarios:

* ``--scenario big``: a simulated large store (default 100,000 videos at a small D so it fits on
  disk), built by committing segments directly; then the figures that must not grow with the
  store: adding 1 video through the staging protocol, a merge of n shards, files per video.
* ``--scenario staged-big``: the same number of small videos staged exactly as an extraction stages them
  (``StagedStore.writer`` with checkpoint segments during the run, then ``finalize``), so the file count
  is that of the real build path: files and inodes per video, segments, peak disk vs the final store,
  staging and commit time per video. ``--like-dim 512`` (default) scales the byte thresholds that
  decide the layout (checkpoint size, nodes shard size) by the size ratio of a D=512 video, so the
  segments and shards fall where a build of the same number of D=512 videos puts them (a
  Something-Something-scale layout that fits on this disk); ``--like-dim 0`` keeps them as they are.
* ``--scenario real``: a store at realistic sizes (default 2,000 videos, T=32, K=15, D=512,
  float16, ReLU-like values): staging, commit, resume after an interrupted run, merge, compact,
  peak disk, files per video, and codecs (``--codecs``: gzip-4/gzip-1/lzf for HDF5, zstd/blosc
  levels for Zarr, ratio and write/read bandwidth).

    python bench/store.py --scenario big [--videos 100000] [--suffix .h5 .zarr] [--root /tmp]
    python bench/store.py --scenario staged-big [--videos 220847] [--like-dim 512]
    python bench/store.py --scenario real [--videos 2000] [--codecs]

Everything is written under a temporary folder of ``--root`` and deleted afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hoitool.store import StagedStore, open_store, segments, staging
from hoitool.store.backends import backend_name
from hoitool.store.segments import commit, read_index
from hoitool.store.tools import compact_store, merge_stores

HEADER = {"config": {"bench": True}, "upstream": None}


def video(rng, frames: int, boxes: int, dim: int) -> dict[str, np.ndarray]:
    """Real-looking features: ReLU outputs (about 40% zeros) in float16, the last boxes padding (zeros, invalid)."""
    nodes = np.maximum(rng.normal(-0.25, 1.0, (1, frames, boxes, dim)), 0).astype(np.float16)
    valid = np.ones((1, frames, boxes), bool)
    valid[:, :, boxes * 4 // 5 :] = False
    nodes[~valid] = 0
    corner = rng.uniform(0, 200, (1, frames, boxes, 2))
    return {
        "nodes": nodes,
        "valid": valid,
        "boxes": np.concatenate([corner, corner + 30], axis=-1).astype(np.float32),
        "frame_size": np.array([240, 320], np.int32),
        "frame_valid": np.ones((1, frames), bool),
        "frame_indices": np.arange(frames, dtype=np.int64)[None],
    }


def items(ids, shape, seed=0):
    rng = np.random.default_rng(seed)
    template = [video(rng, *shape) for _ in range(16)]  # generating random data would dominate the timings
    for video_id in ids:  # the content depends on the id only, so interrupted and whole runs agree
        yield video_id, template[int(video_id[1:]) % len(template)], {"views": 1}


def disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(Path(root, name).stat().st_size for root, _, names in os.walk(path) for name in names)


def unshared(path: Path) -> int:
    """Bytes of files under ``path`` that are not hard links of another file (what a merge wrote)."""
    return sum(
        file.stat().st_size
        for file in (Path(root, name) for root, _, names in os.walk(path) for name in names)
        if file.stat().st_nlink == 1
    )


def files(path: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(path))


def inodes(path: Path) -> int:
    """Files and folders (what an inode quota of a cluster file system counts), the store folder included."""
    return sum(1 + len(names) for _, _, names in os.walk(path))


def part_bytes(arrays: dict) -> int:
    """Size of one staged part as ``StagedStore.save`` writes it (npz, uncompressed, with its attrs entry)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, __attrs__=np.frombuffer(b'{"views": 1}', dtype=np.uint8))
    return buffer.tell()


@contextlib.contextmanager
def layout_like(shape, like_dim: int):
    """Decide checkpoints and nodes shards as for videos of feature size ``like_dim`` (see the module docstring).

    A checkpoint starts when the staged parts' (npz) bytes reach max(CHECKPOINT_MIN_BYTES, CHECKPOINT_FRACTION x raw
    bytes in segments, CHECKPOINT_PROJECTED_FRACTION x projected raw bytes): the constants are scaled so the same
    number of small videos triggers it. A nodes shard
    holds SHARD_BYTES of rows: its row count is set to what a ``like_dim`` row gives. The other arrays do not
    depend on D, so their layout is already the real one.
    """
    if not like_dim or like_dim == shape[2]:
        yield
        return
    rng = np.random.default_rng(0)
    small, like = video(rng, *shape), video(rng, shape[0], shape[1], like_dim)
    raw_small, raw_like = (sum(a.nbytes for a in v.values()) for v in (small, like))
    npz_small, npz_like = part_bytes(small), part_bytes(like)
    names = ("CHECKPOINT_MIN_BYTES", "CHECKPOINT_FRACTION", "CHECKPOINT_PROJECTED_FRACTION")
    saved = [getattr(staging, name) for name in names] + [segments._open_writer]
    overhead = (npz_small / raw_small) / (npz_like / raw_like)  # parts are counted as npz bytes, segments as raw
    staging.CHECKPOINT_MIN_BYTES = int(saved[0] * npz_small / npz_like)
    staging.CHECKPOINT_FRACTION = saved[1] * overhead
    staging.CHECKPOINT_PROJECTED_FRACTION = saved[2] * overhead
    like_row = like["nodes"].nbytes

    def open_writer(backend, tmp, arrays, rows):
        info = arrays.get("nodes")
        if backend == "zarr" and info is not None:  # SegmentWriter._create's rule, for a like_dim row
            per_shard = segments._rows(like_row, segments.SHARD_BYTES, rows) // info["chunk"]
            info["block"] = info["chunk"] * min(segments.SHARD_CHUNKS, max(1, per_shard))
        return saved[3](backend, tmp, arrays, rows)

    segments._open_writer = open_writer
    try:
        yield
    finally:
        for name, value in zip(names, saved, strict=False):
            setattr(staging, name, value)
        segments._open_writer = saved[3]


def report(label: str, seconds: float, videos: int, nbytes: int | None = None) -> None:
    per_gb = f", {seconds / (nbytes / 1e9):8.2f} s/GB" if nbytes else ""
    print(f"  {label:44s} {seconds:8.2f} s  {1e3 * seconds / max(1, videos):8.3f} ms/video{per_gb}")


CHECKPOINT = {"bytes": None}


def staged_run(path: Path, ids, shape, seed=0, finalize=True) -> tuple[float, float, int]:
    """Stage ``ids`` (as an extraction does) and commit; returns (staging s, commit s, peak bytes during commit)."""
    staged = StagedStore(path, "features", HEADER)
    if CHECKPOINT["bytes"]:
        staged.checkpoint_bytes = CHECKPOINT["bytes"]
    start = time.perf_counter()
    with staged.writer(expected=len(ids)) as write:
        for video_id, arrays, attrs in items(ids, shape, seed):
            write(video_id, arrays, attrs)
    staging = time.perf_counter() - start
    if not finalize:
        staged.close()
        return staging, 0.0, 0
    parts = disk(staged.parts)  # npz parts and checkpoint segments (hard-linked into the store by the commit)
    checkpoints = sum(disk(entry) for entry in staged.parts.glob("seg-*"))
    start = time.perf_counter()
    staged.finalize({"manifest": "bench", "shard": None})
    committed = time.perf_counter() - start
    # the most on disk at once: the store after the commit, plus the parts it no longer needs (not the linked ones)
    return staging, committed, disk(path) + parts - checkpoints


def big(args, root: Path, suffix: str) -> None:
    shape = (args.frames, args.boxes, args.dim)
    n = args.videos
    path = root / f"big{suffix}"
    ids = [f"v{i:07d}" for i in range(n)]
    print(f"\n== big store: {n} videos, T={shape[0]} K={shape[1]} D={shape[2]}, {suffix}")
    start = time.perf_counter()
    base = {"header": HEADER, "provenance": {"manifest": "bench", "shard": None}, "failed": []}
    commit(path, backend_name(path), "features", items(ids, shape), n, base)
    built = time.perf_counter() - start
    size = disk(path)
    report("build (direct segment commit)", built, n, size)
    print(f"  store: {size / 1e9:.2f} GB on disk, {files(path)} files = {files(path) / n:.5f} files/video")
    start = time.perf_counter()
    reader = open_store(path)
    print(f"  open a reader (index + segment lists)        {time.perf_counter() - start:8.2f} s")
    start = time.perf_counter()
    for video_id in ids[:: max(1, n // 200)]:
        reader.read(video_id)
    reads = len(ids[:: max(1, n // 200)])
    print(f"  random checked read                          {1e3 * (time.perf_counter() - start) / reads:8.2f} ms/video")
    reader.close()
    staging, committed, peak = staged_run(path, ["w0000001"], shape, seed=1)
    report("add 1 video: staging", staging, 1)
    report("add 1 video: commit (new segment + index)", committed, 1)
    print(f"  add 1 video: peak disk {peak / size:.3f} x the final store")
    shards = args.shards
    for index in range(shards):
        shard = root / f"shard{index}{suffix}"
        meta = {**base, "provenance": {"manifest": "bench", "shard": [index, shards]}}
        commit(shard, backend_name(shard), "features", items(ids[index::shards], shape), len(ids[index::shards]), meta)
    out = root / f"merged{suffix}"
    start = time.perf_counter()
    merge_stores([root / f"shard{index}{suffix}" for index in range(shards)], out)
    merged = time.perf_counter() - start
    report(f"merge of {shards} shards", merged, n, disk(out))
    print(f"  merge wrote {unshared(out)} bytes outside hard links ({disk(out) / 1e9:.2f} GB of segments linked)")
    for index in range(shards):
        shutil.rmtree(root / f"shard{index}{suffix}")
    shutil.rmtree(out)
    shutil.rmtree(path)


def staged_big(args, root: Path, suffix: str) -> None:
    """Many small videos through the extraction's staging path (background writer, checkpoints, finalize)."""
    shape = (args.frames, args.boxes, args.dim)
    n = args.videos
    path = root / f"staged{suffix}"
    like = f", layout as for D={args.like_dim}" if args.like_dim and args.like_dim != args.dim else ""
    print(f"\n== staged big store: {n} videos, T={shape[0]} K={shape[1]} D={shape[2]}{like}, {suffix}")
    peaks: list[int] = []
    original = staging.write_segments

    def measured(folder, *rest):  # a checkpoint: its segment is complete, its parts not yet removed
        names = original(folder, *rest)
        peaks.append(disk(folder))
        return names

    with layout_like(shape, args.like_dim):
        staged = StagedStore(path, "features", HEADER)
        staging.write_segments = measured
        try:
            start = time.perf_counter()
            with staged.writer(expected=n) as write:  # as the extraction engine does (the videos it has to do)
                for video_id, arrays, attrs in items([f"v{i:07d}" for i in range(n)], shape):
                    write(video_id, arrays, attrs)
            staged_s = time.perf_counter() - start
        finally:
            staging.write_segments = original
        checkpoints = len(peaks)
        parts = disk(staged.parts)
        linked = sum(disk(entry) for entry in staged.parts.glob("seg-*"))
        start = time.perf_counter()
        meta = staged.finalize({"manifest": "bench", "shard": None})
        commit_s = time.perf_counter() - start
    size = disk(path)
    peak = max([*peaks, disk(path) + parts - linked])  # the commit: the store plus the last parts it reads
    raw = sum(array.nbytes for array in next(items(["x0"], shape))[1].values()) * n
    print(f"  {checkpoints} checkpoints during the run")
    report("staging incl. checkpoints (background writer)", staged_s, n, raw)
    report("final commit (last parts + index)", commit_s, n, size)
    count, nodes = files(path), inodes(path)
    print(
        f"  store {size / 1e9:.2f} GB ({raw / size:.2f}x), {meta['num_segments']} segments, {count} files = "
        f"{count / n:.5f} files/video, {nodes} inodes (files + folders) = {nodes / n:.5f}/video"
    )
    print(f"  peak disk {peak / 1e9:.2f} GB = {peak / size:.3f} x the final store")
    assert meta["num_videos"] == n
    shutil.rmtree(path)


def real(args, root: Path, suffix: str) -> None:
    shape = (args.frames, args.boxes, args.dim)
    n = args.videos
    ids = [f"v{i:06d}" for i in range(n)]
    path = root / f"real{suffix}"
    print(f"\n== realistic store: {n} videos, T={shape[0]} K={shape[1]} D={shape[2]}, float16, {suffix}")
    staging, committed, peak = staged_run(path, ids, shape)
    size = disk(path)
    raw = sum(array.nbytes for array in next(items(["x0"], shape))[1].values()) * n
    report("staging (npz parts, background writer)", staging, n, raw)
    report("commit (one new segment + index)", committed, n, size)
    if args.build_only:
        print(
            f"  store {size / 1e9:.2f} GB, peak disk {peak / size:.2f} x the store; "
            f"{len(read_index(path)['segments'])} segments, {files(path) / n:.5f} files/video, "
            f"{inodes(path) / n:.5f} inodes/video"
        )
        shutil.rmtree(path)
        return
    print(
        f"  store {size / 1e9:.2f} GB ({raw / size:.2f}x compression), peak disk during the commit "
        f"{peak / 1e9:.2f} GB = {peak / size:.2f} x the store; {files(path) / n:.5f} files/video"
    )
    # resume after an interrupted run: half staged, the process gone, the re-run stages the rest and commits
    resumed = root / f"resumed{suffix}"
    half = n // 2
    staged_run(resumed, ids[:half], shape, finalize=False)
    start = time.perf_counter()
    again = StagedStore(resumed, "features", HEADER)
    done = again.done_ids()
    todo = [video_id for video_id in ids if video_id not in done]
    again.close()
    restart = time.perf_counter() - start
    staging2, committed2, _ = staged_run(resumed, todo, shape)
    report("resume: restart (lock, clean, done ids)", restart, n)
    report("resume: stage the other half + commit", staging2 + committed2, n - half)
    assert open_store(resumed).fingerprint == open_store(path).fingerprint
    print("  resumed store has the fingerprint of the uninterrupted one")
    shutil.rmtree(resumed)
    staging, committed, _ = staged_run(path, ["w000001"], shape, seed=1)
    report("add 1 video to it: staging + commit", staging + committed, 1)
    shards = args.shards
    for index in range(shards):
        staged = StagedStore(root / f"s{index}{suffix}", "features", HEADER)
        for video_id, arrays, attrs in items(ids[index::shards], shape):
            staged.save(video_id, arrays, attrs)
        staged.finalize({"manifest": "bench", "shard": [index, shards]})
    out = root / f"merged{suffix}"
    start = time.perf_counter()
    merge_stores([root / f"s{index}{suffix}" for index in range(shards)], out)
    report(f"merge of {shards} shards", time.perf_counter() - start, n, disk(out))
    print(f"  merge wrote {unshared(out)} bytes outside hard links")
    for index in range(shards):
        shutil.rmtree(root / f"s{index}{suffix}")
    segments = len(read_index(out)["segments"])
    start = time.perf_counter()
    compact_store(out)
    report(
        f"compact ({segments} segments -> {len(read_index(out)['segments'])})",
        time.perf_counter() - start,
        n,
        disk(out),
    )
    shutil.rmtree(out)
    shutil.rmtree(path)


def codecs(args, root: Path) -> None:
    """Ratio and bandwidth of each candidate codec on the same real-looking nodes, one chunk per video.

    "read per video" is one row read the way a lazily training worker reads it: h5py for HDF5
    (filters in HDF5's C library), and for Zarr both zarr-python and hoitool's direct shard
    reader (hoitool/store/zarr_rows.py) where its layout applies.
    """
    import h5py
    import hdf5plugin
    import zarr
    from zarr.codecs import BloscCodec, ZstdCodec

    from hoitool.store.zarr_rows import row_reader

    rng = np.random.default_rng(0)
    n = 64
    data = np.stack([video(rng, args.frames, args.boxes, args.dim)["nodes"] for _ in range(n)])
    raw = data.nbytes
    print(f"\n== codecs on {n} videos of nodes {data.shape[1:]} float16 (MB/s of raw data; best of 3)")

    def best_read(read) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for row in range(n):
                read(row)
            times.append(time.perf_counter() - start)
        return min(times)

    hdf5 = {
        "hdf5 none": {},
        "hdf5 gzip-4 + shuffle (schema 1)": dict(compression="gzip", compression_opts=4, shuffle=True),
        "hdf5 gzip-1 + shuffle (schema 2, before)": dict(compression="gzip", compression_opts=1, shuffle=True),
        "hdf5 lzf": dict(compression="lzf"),
        "hdf5 zstd-1 (default)": dict(hdf5plugin.Zstd(clevel=1)),
        "hdf5 zstd-3": dict(hdf5plugin.Zstd(clevel=3)),
        "hdf5 lz4": dict(hdf5plugin.LZ4()),
        "hdf5 blosc lz4-5 + shuffle": dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE)),
    }
    for label, options in hdf5.items():
        path = root / "codec.h5"
        writes, reads = [], []
        for _ in range(3):
            start = time.perf_counter()
            with h5py.File(path, "w") as handle:
                handle.create_dataset("n", data=data, chunks=(1, *data.shape[1:]), **options)
            writes.append(time.perf_counter() - start)
        with h5py.File(path, "r") as handle:
            dataset = handle["n"]
            reads.append(best_read(lambda row, dataset=dataset: dataset[row]))
        print(
            f"  {label:36s} ratio {raw / path.stat().st_size:5.2f}  write {raw / min(writes) / 1e6:6.0f}  "
            f"read {raw / min(reads) / 1e6:6.0f}  ({1e3 * min(reads) / n:.2f} ms/video)"
        )
        path.unlink()
    zarrs = {
        "zarr zstd-1 (default)": [ZstdCodec(level=1)],
        "zarr zstd-3": [ZstdCodec(level=3)],
        "zarr blosc zstd-1 + shuffle": [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=2)],
        "zarr blosc lz4-5 + shuffle": [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle", typesize=2)],
    }
    for label, compressors in zarrs.items():
        path = root / "codec.zarr"
        writes = []
        for _ in range(3):
            shutil.rmtree(path, ignore_errors=True)
            start = time.perf_counter()
            array = zarr.create_array(
                str(path),
                shape=data.shape,
                chunks=(1, *data.shape[1:]),
                shards=data.shape,
                dtype=data.dtype,
                compressors=compressors,
            )
            array[:] = data
            writes.append(time.perf_counter() - start)
        array = zarr.open_array(str(path), mode="r")
        read = best_read(lambda row, array=array: array[row])
        direct = row_reader(path, array)
        fast = f"; hoitool's row reader {1e3 * best_read(direct.read) / n:.2f} ms/video" if direct else ""
        print(
            f"  {label:36s} ratio {raw / disk(path):5.2f}  write {raw / min(writes) / 1e6:6.0f}  "
            f"read {raw / read / 1e6:6.0f}  ({1e3 * read / n:.2f} ms/video through zarr{fast})"
        )
        shutil.rmtree(path)


def throughput(args) -> None:
    """Training from the store, not preloaded (DataLoader workers read lazily), vs from RAM: T=32, K=15, D=512, batch 8."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_throughput import store_vs_ram_benchmark

    for suffix in args.suffix:
        print(f"\n== lazy vs RAM training throughput, {suffix}")
        store_vs_ram_benchmark(argparse.Namespace(device="cpu", small=False, workers=2, suffix=suffix, rounds=3))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["big", "staged-big", "real"], default="real")
    parser.add_argument("--videos", type=int, default=None)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--boxes", type=int, default=15)
    parser.add_argument("--dim", type=int, default=None, help="default: 8 (big), 512 (real)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--suffix", nargs="+", default=[".h5", ".zarr"])
    parser.add_argument("--codecs", action="store_true", help="also compare codecs (real scenario)")
    parser.add_argument("--root", default=tempfile.gettempdir())
    parser.add_argument(
        "--throughput", action="store_true", help="also training throughput lazy vs RAM (bench/train_throughput.py)"
    )
    parser.add_argument("--build-only", action="store_true", help="real: only staging, commit, peak disk, files")
    parser.add_argument("--like-dim", type=int, default=512, help="staged-big: lay out as for this D (0: as is)")
    parser.add_argument("--checkpoint-mb", type=float, default=None, help="staged parts per checkpoint segment")
    args = parser.parse_args(argv)
    CHECKPOINT["bytes"] = int(args.checkpoint_mb * 2**20) if args.checkpoint_mb else None
    big_store = args.scenario in ("big", "staged-big")
    args.videos = args.videos or (100_000 if big_store else 2000)
    args.dim = args.dim or (8 if big_store else 512)
    free = shutil.disk_usage(args.root).free
    print(f"store benchmark, {args.root} has {free / 1e9:.0f} GB free; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(dir=args.root, prefix="hoitool-store-bench-") as tmp:
        for suffix in args.suffix:
            {"big": big, "staged-big": staged_big, "real": real}[args.scenario](args, Path(tmp), suffix)
        if args.codecs:
            codecs(args, Path(tmp))
        if args.throughput:
            throughput(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
