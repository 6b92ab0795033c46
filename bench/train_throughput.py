"""Training throughput: reading batches from the features store vs the same training on in-RAM tensors.

The store path is what ``hoitool train-teacher`` does with ``data.preload: false``:
a DataLoader whose workers each open the store and decompress one video per
item. The RAM path indexes tensors already in memory. Both run the same model,
loss and optimizer steps, so the ratio says how much of the training speed the
store costs (target: >= 90%, issue 11). It also times the store reads alone, which bound
what the store can feed a device faster than this one. Prints figures; asserts nothing.

    python bench/train.py --only store [--device cpu|cuda] [--small] [--workers 2] [--suffix .h5|.zarr]

``store_vs_ram_benchmark(args)`` is the "store" section of bench/train.py; it reads
``args.device``, ``args.small`` and, when present, ``args.workers``,
``args.suffix``, ``args.epochs``, ``args.rounds``, ``args.worker_niceness`` and ``args.features`` (an existing store to
read instead of a generated one).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hoitool.device import resolve_device
from hoitool.losses import supervised_loss
from hoitool.manifest import Manifest, VideoEntry
from hoitool.nn.models import build_model
from hoitool.store import StagedStore, open_store
from hoitool.train import data as data_module
from hoitool.train.data import EpochBatchSampler, ViewDataset, batches, collate, make_loader, split_videos

# Charades-like graphs (T=32 frames x K=15 boxes of 512-d, GLIDN's I3D setting) and a small variant
SIZES = {
    "full": {"videos": 256, "frames": 32, "boxes": 15, "dim": 512, "batch": 8},
    "small": {"videos": 64, "frames": 16, "boxes": 10, "dim": 256, "batch": 8},
}
CLASSES = 10


def make_store(root: Path, size: dict, suffix: str) -> Path:
    """A synthetic features store of real-looking nodes (ReLU outputs in float16, padded boxes zero: bench/store.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from store import video  # bench/store.py, beside this file

    rng = np.random.default_rng(0)
    videos = [
        VideoEntry(id=f"v{i:05d}", source=f"v{i:05d}.mp4", labels=[int(rng.integers(CLASSES))], split="train")
        for i in range(size["videos"])
    ]
    Manifest(dataset="bench", classes=[f"c{c}" for c in range(CLASSES)], multilabel=False, videos=videos).save(
        root / "manifest.json"
    )
    path = root / f"features{suffix}"
    staged = StagedStore(path, "features", {"config": {}, "upstream": None})
    for entry in videos:
        staged.save(entry.id, video(rng, size["frames"], size["boxes"], size["dim"]))
    staged.finalize({"manifest": str((root / "manifest.json").resolve())}, {"views": 1, "dim": size["dim"]})
    return path


def _cpu_per_video(dataset, videos, batch: int, workers: int, device: torch.device) -> dict:
    """CPU ms per video that one lazy epoch costs the workers and the main process (CPU time: robust to other load).

    Fresh, non-persistent workers (their CPU is counted when they exit), so this includes the
    first-read hashing, which later epochs of a persistent worker skip for what it read before.
    """
    import resource

    if not workers:
        return {}
    sampler = EpochBatchSampler(len(videos), batch, seed=1)
    loader = make_loader(dataset, workers, device.type == "cuda", seed=0, batch_sampler=sampler, persistent=False)
    children, main = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)
    read = sum(len(batch["index"]) for batch in batches(loader))
    del loader
    after_children, after_main = resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)

    def cpu(before, after) -> float:
        return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime

    return {
        "worker_cpu_ms": 1e3 * cpu(children, after_children) / read,
        "main_cpu_ms": 1e3 * cpu(main, after_main) / read,
    }


def _steady_worker_cpu(loader, epoch_batches) -> float | None:
    """CPU ms per video of the persistent workers over one more epoch (Linux /proc; None elsewhere).

    Unlike :func:`_cpu_per_video` this leaves out starting the workers and the first read's
    hashing of what they read before: what every later epoch of a training run costs.
    """
    iterator = getattr(loader, "_iterator", None)
    pids = [worker.pid for worker in getattr(iterator, "_workers", [])]

    def ticks() -> float:
        total = 0
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / os.sysconf("SC_CLK_TCK")

    try:
        before = ticks()
        read = sum(len(batch["index"]) for batch in epoch_batches())
        return 1e3 * (ticks() - before) / read if pids else None
    except (OSError, ValueError, IndexError):
        return None


def _load() -> float:
    """The 1-minute load average (other jobs on a shared machine slow whichever path runs beside them)."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return float("nan")


def _train_step(model, optimizer, batch: dict, device: torch.device) -> None:
    batch = {name: value.to(device, non_blocking=True) for name, value in batch.items()}
    logits = model(batch["nodes"], batch["valid"], batch["boxes"], batch["frame_size"])
    loss = supervised_loss(logits, batch["target"], multilabel=False).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _warm_up(epoch_batches, model, optimizer, device: torch.device) -> None:
    for batch in epoch_batches():
        _train_step(model, optimizer, batch, device)


def _videos_per_second(epoch_batches, model, optimizer, device: torch.device, epochs: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    videos, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in epoch_batches():
            _train_step(model, optimizer, batch, device)
            videos += len(batch["index"])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return videos / (time.perf_counter() - start)


def store_vs_ram_benchmark(args) -> dict:
    """Print and return videos/s from the store (lazy, workers) and from RAM, and their ratio."""
    device = resolve_device(getattr(args, "device", "auto"))
    size = SIZES["small" if getattr(args, "small", False) else "full"]
    workers = getattr(args, "workers", None)
    workers = 2 if workers is None else workers
    epochs = getattr(args, "epochs", None) or 1
    rounds = getattr(args, "rounds", None) or 5
    if getattr(args, "worker_niceness", None) is not None:
        data_module.WORKER_NICENESS = args.worker_niceness  # read by make_loader
    with tempfile.TemporaryDirectory() as tmp:
        features = getattr(args, "features", None) or make_store(
            Path(tmp), size, getattr(args, "suffix", None) or ".h5"
        )
        reader = open_store(features)
        videos = split_videos(Manifest.load(reader.manifest_path), reader.video_ids, "train")
        dim = int(reader.attrs.get("dim") or reader.read(videos.video_ids[0], ["nodes"])["nodes"].shape[-1])
        classes = videos.num_classes
        sampler = EpochBatchSampler(len(videos), size["batch"], seed=0)
        lazy = ViewDataset(reader, videos)
        loader = make_loader(lazy, workers, device.type == "cuda", seed=0, batch_sampler=sampler)

        def store_batches():
            sampler.set_epoch(sampler.epoch + 1)
            return batches(loader)

        resident = ViewDataset(reader, videos)
        resident.preload(show_progress=False)
        every_video = next(iter(EpochBatchSampler(len(videos), len(videos), seed=0, shuffle=False)))
        tensors = collate([resident[ref] for ref in every_video])  # the whole split as dense tensors, once
        if device.type == "cuda":
            tensors = {name: value.pin_memory() for name, value in tensors.items()}
        ram_sampler = EpochBatchSampler(len(videos), size["batch"], seed=0)

        def ram_batches():
            ram_sampler.set_epoch(ram_sampler.epoch + 1)
            for refs in ram_sampler:
                index = torch.tensor([ref.position for ref in refs])
                yield {name: value.index_select(0, index) for name, value in tensors.items()}

        paths = {"store": store_batches, "ram": ram_batches}
        trainers = {}
        for name, epoch_batches in paths.items():
            torch.manual_seed(0)
            model = build_model({"view": "global", "hidden": 512, "layers": 1}, dim, classes).to(device)
            trainers[name] = (model, torch.optim.Adam(model.parameters(), lr=1e-4))
            _warm_up(epoch_batches, *trainers[name], device)
        # alternate the two paths over several rounds: on a shared machine the load changes under a benchmark,
        # so each timing is printed with the load average (1 min) before and after it
        timings: dict[str, list[float]] = {name: [] for name in paths}
        for round_index in range(rounds):
            line = []
            for name, epoch_batches in paths.items():
                before = _load()
                timings[name].append(_videos_per_second(epoch_batches, *trainers[name], device, epochs))
                line.append(f"{name} {timings[name][-1]:6.1f} videos/s (load {before:.2f} -> {_load():.2f})")
            ratio_now = timings["store"][-1] / timings["ram"][-1]
            print(f"  round {round_index + 1}: {', '.join(line)}; ratio {100 * ratio_now:.0f}%", flush=True)
        results = {name: float(np.median(values)) for name, values in timings.items()}
        ratios = np.array(timings["store"]) / np.array(timings["ram"])
        ratio = float(np.median(ratios))
        started, read = time.perf_counter(), 0
        for _ in range(epochs):
            read += sum(len(batch["index"]) for batch in store_batches())
        results["read_only"] = read / (time.perf_counter() - started)
        steady = _steady_worker_cpu(loader, store_batches)
        if steady is not None:
            results["steady_worker_cpu_ms"] = steady
        results.update(_cpu_per_video(lazy, videos, size["batch"], workers, device))
        del store_batches  # the loader (and its workers) end with this scope
        reader.close()
    print(
        f"training throughput on {device} ({len(videos)} videos, T={size['frames']} K={size['boxes']} D={size['dim']}, "
        f"batch {size['batch']}, {workers} workers; median of {rounds} alternating rounds of {epochs} epoch(s)):"
    )
    print(f"  {'from the store (lazy, ' + Path(str(features)).suffix + ')':28s} {results['store']:8.1f} videos/s")
    print(f"  {'from RAM tensors':28s} {results['ram']:8.1f} videos/s")
    print(
        f"  ratio store/RAM (median of rounds): {100 * ratio:.0f}% (rounds {100 * ratios.min():.0f}-"
        f"{100 * ratios.max():.0f}%; target >= 90%)"
    )
    print(
        f"  {'store reads alone (no model)':28s} {results['read_only']:8.1f} videos/s  (the most the store can feed a faster device)"
    )
    if "worker_cpu_ms" in results:
        step_ms = 1e3 / results["ram"]
        print(
            f"  CPU per video of the lazy path (one epoch, fresh workers, so every array is hashed): workers "
            f"{results['worker_cpu_ms']:.2f} ms, main process receiving {results['main_cpu_ms']:.2f} ms; a training "
            f"step takes {step_ms:.1f} ms per video from RAM, so if the workers' CPU only delays it (all cores busy): "
            f"{100 * step_ms / (step_ms + results['worker_cpu_ms'] + results['main_cpu_ms']):.0f}%"
        )
    if "steady_worker_cpu_ms" in results:
        print(
            f"  CPU per video of the persistent workers in a later epoch: {results['steady_worker_cpu_ms']:.2f} ms "
            f"(reading, hashing what is new to the worker, collating, sending)"
        )
    serial = 1.0 / (1.0 + results["ram"] / results["read_only"])
    print(f"  expected ratio if reads never overlap compute (workers=0): {100 * serial:.0f}%")
    return {
        "store_videos_per_s": results["store"],
        "ram_videos_per_s": results["ram"],
        "ratio": ratio,
        "ratios": ratios.tolist(),
        "read_only_videos_per_s": results["read_only"],
        **{key: results[key] for key in ("worker_cpu_ms", "main_cpu_ms", "steady_worker_cpu_ms") if key in results},
    }
