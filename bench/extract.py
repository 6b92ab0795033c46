"""Extraction benchmark (prints figures; not a test).

1. Throughput: frames/s of the backbone + RoIAlign alone on pre-decoded frames vs the full
   `hoitool extract features` command (decode in workers, model, background writer), and
   their ratio (target: >= 80%).
2. Storage: bytes per video and compression ratio for HDF5 and Zarr.
3. Memory: peak RSS of the full command for two dataset sizes (target: flat in the number of videos).

    python bench/extract.py [--backbone resnet18] [--small]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def hoitool(*args: str) -> tuple[float, int]:
    """Run the CLI in a child process; return (seconds, peak RSS in MiB of that child)."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "hoitool", "--quiet", *args])
    _, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"hoitool {' '.join(args)} failed")
    return elapsed, usage.ru_maxrss // 1024


def prepare(root: Path, videos_per_class: int, frames: int, size: int) -> tuple[Path, Path]:
    from hoitool.datasets.synthetic import generate

    generate(root / "data", videos_per_class=videos_per_class, num_frames=frames, size=size, seed=0)
    boxes = root / "boxes.h5"
    hoitool(
        "extract",
        "boxes",
        str(root / "data"),
        "--out",
        str(boxes),
        "--source",
        "dataset",
        "--frames",
        str(frames),
        "--top-k",
        "8",
        "--workers",
        "0",
    )
    return root / "data" / "manifest.json", boxes


def backbone_alone(boxes_path: Path, manifest_path: Path, args) -> float:
    """frames/s of prepare_frames + backbone + RoIAlign on frames decoded beforehand."""
    from hoitool.config import resolve_config
    from hoitool.extract.features import FEATURES_DEFAULTS, FramesLoader, NodeFeatures
    from hoitool.manifest import Manifest
    from hoitool.store import open_store

    config = resolve_config(
        FEATURES_DEFAULTS,
        overrides=[
            f"backbone.arch={args.backbone}",
            "backbone.weights=random",
            f"short_side={args.short_side}",
            "runtime.device=cpu",
        ],
    )
    loader = FramesLoader(Manifest.load(manifest_path), boxes_path)
    items = [loader(video_id) for video_id in open_store(boxes_path).video_ids]
    model = NodeFeatures(config)
    frames = sum(item["frame_indices"].size for item in items)
    model(items[0])  # warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        for item in items:
            model(item)
    return frames / (time.perf_counter() - start)


def full_command(boxes_path: Path, out: Path, args) -> float:
    """frames/s of the `extract features` stage itself (decode workers, model, writer, finalize), in-process."""
    from hoitool.config import resolve_config
    from hoitool.extract.features import FEATURES_DEFAULTS, extract_features

    config = resolve_config(
        FEATURES_DEFAULTS,
        overrides=[
            f"backbone.arch={args.backbone}",
            "backbone.weights=random",
            f"short_side={args.short_side}",
            "runtime.device=cpu",
            f"runtime.workers={args.workers}",
        ],
    )
    start = time.perf_counter()
    summary = extract_features(boxes_path, out, config)
    elapsed = time.perf_counter() - start
    return summary.meta["num_videos"] * args.frames / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--videos-per-class", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="A quick run with fewer videos.")
    args = parser.parse_args()
    if args.small:
        args.videos_per_class, args.frames = 2, 8
    torch.set_num_threads(max(1, (os.cpu_count() or 2) - args.workers))
    common = [
        "--backbone",
        args.backbone,
        "--weights",
        "random",
        "--device",
        "cpu",
        "--workers",
        str(args.workers),
        "--set",
        f"short_side={args.short_side}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest, boxes = prepare(root, args.videos_per_class, args.frames, args.size)
        from hoitool.store import open_store
        from hoitool.store.tools import store_info

        videos = len(open_store(boxes).video_ids)
        frames = videos * args.frames
        alone = backbone_alone(boxes, manifest, args)
        full = full_command(boxes, root / "inproc.h5", args)
        seconds, rss_small = hoitool("extract", "features", str(boxes), "--out", str(root / "f.h5"), *common)
        hoitool("extract", "features", str(boxes), "--out", str(root / "f.zarr"), *common)
        print(
            f"# extraction benchmark: {args.backbone}, {videos} videos x {args.frames} frames, "
            f"{args.size}px source, short side {args.short_side}, {args.workers} decode workers, "
            f"{torch.get_num_threads()} torch threads, CPU"
        )
        print(f"backbone+RoIAlign alone (pre-decoded): {alone:8.1f} frames/s")
        print(
            f"full `extract features` stage:         {full:8.1f} frames/s "
            f"(CLI wall clock incl. interpreter and model start-up: {frames / seconds:.1f} frames/s)"
        )
        print(f"ratio full/alone:                       {full / alone:8.1%}  (target >= 80%)")
        for name in ("f.h5", "f.zarr"):
            info = store_info(root / name)
            print(
                f"{name:7s} {info['bytes_on_disk'] / videos / 1024:8.1f} KiB/video on disk, "
                f"compression ratio {info['compression_ratio']:.2f}x"
            )
        # peak memory for a second, larger dataset
        big = root / "big"
        manifest2, boxes2 = prepare(big, args.videos_per_class * 3, args.frames, args.size)
        videos2 = len(open_store(boxes2).video_ids)
        _, rss_big = hoitool("extract", "features", str(boxes2), "--out", str(big / "f.h5"), *common)
        print(
            f"peak RSS: {rss_small} MiB for {videos} videos, {rss_big} MiB for {videos2} videos "
            f"(growth {rss_big - rss_small:+d} MiB; target: flat)"
        )


if __name__ == "__main__":
    main()
