"""``hoitool extract boxes``: T sampled frames per video (per clip) -> top-K boxes per frame.

Sources: ``rpn`` (Faster R-CNN region proposals), ``detector`` (Faster R-CNN detections with
classes), ``dataset`` (the manifest's own boxes, e.g. the synthetic ground truth or CAD-120),
``import`` (an external detector's output in the boxes JSON-lines format).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import get_args

import numpy as np
import torch

from hoitool.boxes.jsonl import FrameBoxes, read_boxes_jsonl
from hoitool.errors import UsageError
from hoitool.extract.common import content_config, provenance
from hoitool.extract.engine import StageSummary, VideoFailure, run_video_stage
from hoitool.io.digest import file_sha256
from hoitool.manifest import Manifest, select_shard
from hoitool.settings import resolved
from hoitool.settings.boxes import BoxesSettings, BoxSourceName
from hoitool.store.staging import StagedStore, shard_path

SOURCES = get_args(BoxSourceName)  # rpn, detector (box models: hoitool.boxes.models), dataset, import

BOXES_DEFAULTS = BoxesSettings().model_dump()  # the defaults live, described, in hoitool.settings.boxes


@functools.lru_cache(maxsize=4)
def _annotations(path: str, mtime: float) -> dict:
    """Parse a boxes file once per process (``mtime`` in the key notices edits)."""
    return read_boxes_jsonl(path)


def _sample(manifest: Manifest, video, frames: int, clips: int):
    from hoitool.video.reader import probe, sample_indices

    path = manifest.source_path(video)
    info = probe(path, video.kind)
    if info.num_frames <= 0:
        raise VideoFailure(f"{path}: video {video.id!r} has no frames")
    per_clip = [sample_indices(info.num_frames, frames, clip, clips) for clip in range(clips)]
    indices = np.stack([index for index, _ in per_clip])
    valid = np.stack([mask for _, mask in per_clip])
    return path, info, indices, valid


def pack(frame_boxes: list[FrameBoxes], top_k: int) -> dict[str, np.ndarray]:
    """List of T per-frame boxes -> padded (T, K, ...) arrays, best scores first."""
    count = len(frame_boxes)
    out: dict[str, np.ndarray] = {
        "boxes": np.zeros((count, top_k, 4), np.float32),
        "scores": np.zeros((count, top_k), np.float32),
        "labels": np.full((count, top_k), -1, np.int64),
        "is_person": np.zeros((count, top_k), bool),
        "valid": np.zeros((count, top_k), bool),
    }
    for t, item in enumerate(frame_boxes):
        order = np.argsort(-item.scores, kind="stable")[:top_k]
        n = len(order)
        out["boxes"][t, :n] = item.boxes[order]
        out["scores"][t, :n] = item.scores[order]
        out["labels"][t, :n] = item.labels[order]
        out["is_person"][t, :n] = item.is_person[order]
        out["valid"][t, :n] = True
    return out


class BoxesLoader:
    """Worker side: sample frame indices, decode frames (model sources) or look up annotated boxes."""

    def __init__(self, manifest: Manifest, config: dict):
        self.manifest = manifest
        self.config = config
        self.videos = manifest.by_id()
        self.decode = config["source"] in ("rpn", "detector")

    def __call__(self, video_id: str) -> dict:
        video = self.videos[video_id]
        path, info, indices, valid = _sample(self.manifest, video, self.config["frames"], self.config["clips"])
        item = {"indices": indices, "frame_valid": valid, "frame_size": np.array([info.height, info.width])}
        if self.decode:
            from hoitool.video.reader import read_frames

            unique, inverse = np.unique(indices, return_inverse=True)
            item["frames"] = read_frames(path, video.kind, unique)
            item["frame_slot"] = inverse.reshape(indices.shape)
        else:
            item["annotated"] = self._annotated_frames(video)
        return item

    def _annotated_frames(self, video) -> dict[int, FrameBoxes]:
        if self.config["source"] == "import":
            path = Path(self.config["import_file"])
        elif video.annotations:
            path = self.manifest.resolve(video.annotations)
        else:
            raise VideoFailure(f"video {video.id!r}: the manifest names no annotation file (source=dataset)")
        if not path.exists():
            raise VideoFailure(f"{path}: annotation file for video {video.id!r} not found")
        frames = _annotations(str(path), path.stat().st_mtime).get(video.id)
        if frames is None:
            raise VideoFailure(f"{path}: no boxes for video {video.id!r}")
        return frames


class BoxesModel:
    """Main-process side: run the box model (or take the loaded boxes) and pack top-K arrays."""

    def __init__(self, config: dict):
        self.config = config
        self.model = None
        self.weights: dict = {}
        source = config["source"]
        if source not in SOURCES:
            raise UsageError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
        if source == "import":
            if not config["import_file"]:
                raise UsageError("source=import needs --import FILE (boxes JSON-lines, docs/boxes-jsonl.md)")
            path = Path(config["import_file"])
            if not path.exists():
                raise UsageError(f"{path}: boxes file to import not found")
            self.weights = {"import_file": file_sha256(path)[:16]}
        if source in ("rpn", "detector"):
            from hoitool.boxes.models import build_box_model
            from hoitool.device import resolve_device

            model = config["model"]
            self.model = build_box_model(
                source,
                top_k=config["top_k"],
                weights=model["weights"],
                seed=model["seed"],
                device=resolve_device(config["runtime"]["device"]),
                nms_iou=model["nms_iou"],
                score_threshold=model["score_threshold"],
                min_size=model["min_size"],
                max_size=model["max_size"],
                arch=model["arch"],
            )
            self.weights = {"box_model": self.model.fingerprint}

    def compute(self, item: dict) -> tuple[dict, dict]:
        indices, top_k = item["indices"], self.config["top_k"]
        if self.model is not None:
            frames = torch.from_numpy(item["frames"])
            batch = self.config["runtime"]["batch_frames"]
            detected: list[FrameBoxes] = []
            for start in range(0, len(frames), batch):
                detected.extend(self.model(frames[start : start + batch]))
            per_frame = [[detected[slot] for slot in row] for row in item["frame_slot"]]
        else:
            annotated = item["annotated"]
            per_frame = [[annotated.get(int(index), FrameBoxes.empty()) for index in row] for row in indices]
        clips = [pack(row, top_k) for row in per_frame]
        arrays = {name: np.stack([clip[name] for clip in clips]) for name in clips[0]}
        arrays["valid"] &= item["frame_valid"][..., None]
        if not arrays["valid"].any():
            raise VideoFailure(f"video {item['video']!r}: no boxes in any sampled frame")
        arrays.update(frame_indices=indices, frame_valid=item["frame_valid"], frame_size=item["frame_size"])
        empty = int((~arrays["valid"].any(-1) & item["frame_valid"]).sum())
        return arrays, {"empty_frames": empty}


def extract_boxes(
    manifest_path: Path, out: Path, config: dict | BoxesSettings, shard=None, force: bool = False
) -> StageSummary:
    config = resolved(BoxesSettings, config)
    manifest = Manifest.load(manifest_path)
    manifest_file = manifest.root / "manifest.json"
    out = shard_path(Path(out), shard)
    header = {"config": content_config(config), "upstream": file_sha256(manifest_file)[:16]}
    staged = StagedStore(out, "boxes", header, force=force, what="boxes store")
    try:
        model = BoxesModel(config)
    except BaseException:  # e.g. missing weights: release the writer lock at once
        staged.close()
        raise
    videos = [video.id for video in select_shard(manifest.videos, shard)]
    prov = provenance("boxes", config, manifest_file, {"manifest": header["upstream"]}, model.weights, shard)
    return run_video_stage(
        staged,
        videos,
        BoxesLoader(manifest, config),
        model.compute,
        prov,
        config["runtime"]["workers"],
        "boxes",
        extra_meta={
            "frames": config["frames"],
            "clips": config["clips"],
            "max_boxes": config["top_k"],
            "source": config["source"],
        },
    )
