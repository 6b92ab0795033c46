"""What digest-checked reads cost: per-video reads and training throughput, checked vs unchecked.

Every ``StoreReader.read`` hashes the arrays it returns (sha256) and compares them with the
digests recorded at write time, so a damaged store is never read as data. This prints:

* reads alone (what a training item reads: ``FIELDS``): ms per video
  with and without the check, interleaved round by round (shared machines change speed under
  a benchmark), and the sha256 hashing by itself;
* one training step per video (the model on an in-RAM batch) and the bound it gives: the
  check's extra time over (read + step) is the most it can cost training throughput, reached
  when reads do not overlap compute (``data.workers: 0``); workers hide part of it;
* with ``--end-to-end``: whole epochs read lazily in DataLoader workers (as ``train-teacher``
  with ``data.preload: false``), checked vs unchecked, alternating.

    python bench/store_reads.py [--device cpu|cuda] [--suffix .h5 .zarr] [--sizes full small] [--end-to-end --workers 2]

Sizes: ``full`` = T=32, K=15, D=512 float16 (GLIDN's Charades setting), ``small`` = T=16, K=10, D=256.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_throughput import CLASSES, SIZES, _train_step, _videos_per_second, make_store  # noqa: E402

from hoitool.device import resolve_device  # noqa: E402
from hoitool.manifest import Manifest  # noqa: E402
from hoitool.nn.models import build_model  # noqa: E402
from hoitool.store import StoreReader, open_store  # noqa: E402
from hoitool.store.schema import video_key  # noqa: E402
from hoitool.train.data import FIELDS, EpochBatchSampler, ViewDataset, batches, collate, make_loader, split_videos  # noqa: E402

CHECKED_READ = StoreReader.read


def _unchecked_read(self, video_id, names=None):
    return self._open().read_video(video_key(video_id), names)


@contextlib.contextmanager
def checking(enabled: bool):
    """Reads with (the default) or without the digest check; set before workers fork, so they inherit it."""
    StoreReader.read = CHECKED_READ if enabled else _unchecked_read
    try:
        yield
    finally:
        StoreReader.read = CHECKED_READ


def read_costs(path: Path, rounds: int) -> dict:
    """Fastest-round ms per video, the modes interleaved round by round: first checked read in a process (a fresh
    reader hashes everything), a repeated checked read (already verified: not hashed again), an unchecked read."""
    results: dict[str, list] = {"checked": [], "again": [], "unchecked": []}

    def epoch(reader) -> float:
        start = time.perf_counter()
        for video_id in reader.video_ids:
            reader.read(video_id, list(FIELDS))
        return (time.perf_counter() - start) / len(reader.video_ids)

    for _ in range(rounds):
        reader = open_store(path)
        results["checked"].append(epoch(reader))
        results["again"].append(epoch(reader))
        reader.close()
        with checking(False):
            reader = open_store(path)
            results["unchecked"].append(epoch(reader))
        arrays = [reader.read(video_id, list(FIELDS)) for video_id in reader.video_ids]
        reader.close()
    start = time.perf_counter()
    for item in arrays:
        for array in item.values():
            hashlib.sha256(np.ascontiguousarray(array)).hexdigest()
    results["hash_only"] = [(time.perf_counter() - start) / len(arrays)]
    # the fastest round of each: on a shared machine other load only ever adds time
    out = {name: float(np.min(value)) * 1e3 for name, value in results.items()}
    out["extra"] = out["checked"] - out["unchecked"]
    out["extra_again"] = out["again"] - out["unchecked"]
    out["bytes"] = sum(array.nbytes for array in arrays[0].values())
    return out


def train_ms_per_video(path: Path, device: torch.device, batch: int, steps: int) -> float:
    """Fastest ms per video of one optimizer step on an in-RAM batch (the model's share of training)."""
    reader = open_store(path)
    videos = split_videos(Manifest.load(reader.manifest_path), reader.video_ids, "train")
    dataset = ViewDataset(reader, videos)
    refs = next(iter(EpochBatchSampler(len(videos), batch, seed=0)))
    tensors = collate([dataset[ref] for ref in refs])
    torch.manual_seed(0)
    model = build_model({"view": "global", "hidden": 512, "layers": 1}, int(reader.attrs["dim"]), CLASSES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        _train_step(model, optimizer, tensors, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= 2:
            times.append((time.perf_counter() - start) / len(refs))
    reader.close()
    return float(np.min(times)) * 1e3


def training_throughput(path: Path, device: torch.device, workers: int, batch: int, rounds: int) -> dict:
    """Median videos/s of lazy store training with and without the check (alternating rounds)."""
    reader = open_store(path)
    videos = split_videos(Manifest.load(reader.manifest_path), reader.video_ids, "train")
    dim = int(reader.attrs["dim"])
    timings = {True: [], False: []}
    trainers = {}
    for enabled in (True, False):
        torch.manual_seed(0)
        model = build_model({"view": "global", "hidden": 512, "layers": 1}, dim, CLASSES).to(device)
        trainers[enabled] = (model, torch.optim.Adam(model.parameters(), lr=1e-4))
    for round_index in range(rounds + 1):  # round 0 warms up
        for enabled in (True, False):
            with checking(enabled):
                sampler = EpochBatchSampler(len(videos), batch, seed=round_index)
                loader = make_loader(
                    ViewDataset(reader, videos),
                    workers,
                    device.type == "cuda",
                    seed=0,
                    batch_sampler=sampler,
                    persistent=False,
                )

                speed = _videos_per_second(functools.partial(batches, loader), *trainers[enabled], device, 1)
                del loader
            if round_index:
                timings[enabled].append(speed)
    reader.close()
    checked, unchecked = np.array(timings[True]), np.array(timings[False])
    return {
        "checked": float(np.median(checked)),
        "unchecked": float(np.median(unchecked)),
        "overhead": float(np.median(1 - checked / unchecked)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--suffix", nargs="+", default=[".h5", ".zarr"], choices=[".h5", ".zarr"])
    parser.add_argument("--sizes", nargs="+", default=["full", "small"], choices=list(SIZES))
    parser.add_argument("--videos", type=int, default=64, help="videos per store")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--end-to-end", action="store_true", help="also time whole epochs with DataLoader workers")
    args = parser.parse_args()
    device = resolve_device(args.device)
    for size_name in args.sizes:
        size = dict(SIZES[size_name], videos=args.videos)
        train_ms = None
        for suffix in args.suffix:
            with tempfile.TemporaryDirectory() as tmp:
                path = make_store(Path(tmp), size, suffix)
                costs = read_costs(path, args.rounds)
                if train_ms is None:
                    train_ms = train_ms_per_video(path, device, size["batch"], steps=3 * args.rounds)
                print(
                    f"{size_name}: T={size['frames']} K={size['boxes']} D={size['dim']} float16, {suffix}, "
                    f"{costs['bytes'] / 1e6:.2f} MB read per video ({', '.join(FIELDS)})"
                )
                print(
                    f"  read per video: unchecked {costs['unchecked']:.2f} ms; checked, first read in a process "
                    f"{costs['checked']:.2f} ms (+{costs['extra']:.2f} ms; sha256 alone {costs['hash_only']:.2f} ms), "
                    f"again {costs['again']:.2f} ms (+{costs['extra_again']:.2f} ms)"
                )
                serial = costs["extra"] / (costs["unchecked"] + train_ms)
                print(
                    f"  training step on {device}: {train_ms:.2f} ms per video; hashing costs at most "
                    f"{100 * serial:.1f}% of an epoch's throughput when reads do not overlap compute "
                    f"(workers=0), and only in the first epoch a process reads a video; "
                    f"read-bound (a device faster than the reads): {100 * costs['extra'] / costs['checked']:.1f}%"
                )
                if args.end_to_end:
                    speed = training_throughput(path, device, args.workers, size["batch"], args.rounds)
                    print(
                        f"  end to end, {args.workers} workers: checked {speed['checked']:.1f} videos/s, unchecked "
                        f"{speed['unchecked']:.1f} videos/s, overhead {100 * speed['overhead']:.1f}% "
                        f"(median of {args.rounds} alternating rounds; noisy on a shared machine)"
                    )


if __name__ == "__main__":
    main()
