"""``hoitool extract boxes``: T sampled frames per video (per clip) -> top-K boxes per frame.

Where the boxes come from is a registered box source (hoitool.boxes.registry: ``rpn``,
``detector``, ``dataset``, ``import``, one module each in hoitool.boxes.sources); this stage
samples the frames, asks the source for each frame's boxes and packs the top K.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hoitool.boxes.jsonl import FrameBoxes
from hoitool.boxes.registry import BoxSource, VideoBoxes, get_box_source
from hoitool.extract.common import content_config, provenance
from hoitool.extract.engine import StageSummary, VideoFailure, run_video_stage
from hoitool.io.digest import file_sha256
from hoitool.manifest import Manifest, select_shard
from hoitool.settings import resolved
from hoitool.settings.boxes import BoxesSettings
from hoitool.store.staging import StagedStore, shard_path

BOXES_DEFAULTS = BoxesSettings().model_dump()  # the defaults live, described, in hoitool.settings.boxes


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
    """Worker side: sample frame indices, then what the source needs of them (decoded frames, annotated boxes)."""

    def __init__(self, manifest: Manifest, config: dict, source: BoxSource):
        self.manifest, self.config, self.source = manifest, config, source
        self.videos = manifest.by_id()

    def __call__(self, video_id: str) -> dict:
        video = self.videos[video_id]
        _, info, indices, valid = _sample(self.manifest, video, self.config["frames"], self.config["clips"])
        item = {"indices": indices, "frame_valid": valid, "frame_size": np.array([info.height, info.width])}
        item.update(self.source.read(self.manifest, video, indices, self.config))
        return item


class BoxesModel:
    """Main-process side: the started source's boxes for each sampled frame, packed into top-K arrays."""

    def __init__(self, config: dict, boxes: VideoBoxes):
        self.config, self.boxes = config, boxes
        self.weights = boxes.weights

    def compute(self, item: dict) -> tuple[dict, dict]:
        per_frame = self.boxes(item)
        clips = [pack(row, self.config["top_k"]) for row in per_frame]
        arrays = {name: np.stack([clip[name] for clip in clips]) for name in clips[0]}
        arrays["valid"] &= item["frame_valid"][..., None]
        if not arrays["valid"].any():
            raise VideoFailure(f"video {item['video']!r}: no boxes in any sampled frame")
        arrays.update(frame_indices=item["indices"], frame_valid=item["frame_valid"], frame_size=item["frame_size"])
        empty = int((~arrays["valid"].any(-1) & item["frame_valid"]).sum())
        return arrays, {"empty_frames": empty}


def extract_boxes(
    manifest_path: Path, out: Path, config: dict | BoxesSettings, shard=None, force: bool = False
) -> StageSummary:
    config = resolved(BoxesSettings, config)
    source = get_box_source(config["source"])
    source.check(config)
    manifest = Manifest.load(manifest_path)
    manifest_file = manifest.root / "manifest.json"
    out = shard_path(Path(out), shard)
    header = {"config": content_config(config), "upstream": file_sha256(manifest_file)[:16]}
    staged = StagedStore(out, "boxes", header, force=force, what="boxes store")
    try:
        model = BoxesModel(config, source.start(config))
    except BaseException:  # e.g. missing weights: release the writer lock at once
        staged.close()
        raise
    videos = [video.id for video in select_shard(manifest.videos, shard)]
    prov = provenance("boxes", config, manifest_file, {"manifest": header["upstream"]}, model.weights, shard)
    return run_video_stage(
        staged,
        videos,
        BoxesLoader(manifest, config, source),
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
