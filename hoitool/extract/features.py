"""``hoitool extract features``: the boxes store's frames and boxes -> node features per box.

Mode ``roi``: backbone feature map of each frame (2D) or clip (3D, mapped back to frames),
then one RoIAlign call for all boxes of the video (7x7, aligned, scale 1/stride), max- or
average-pooled. Mode ``crop``: each box cropped from the decoded frame at source resolution,
resized to ``crop_size`` and embedded by a 2D backbone (the CAD-120 recipe). Views = clips
(from the boxes store) x flips (1, or 2 with ``flip``: the frames mirrored left-right, boxes
mirrored with them) x spatial crops (1 or 3), in that order: view ``(clip * flips + flip) * crops + crop``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hoitool.errors import UsageError
from hoitool.extract.common import content_config, provenance
from hoitool.extract.engine import StageSummary, run_video_stage
from hoitool.manifest import Manifest, select_shard
from hoitool.settings import resolved
from hoitool.settings.features import FeaturesSettings
from hoitool.store import open_store
from hoitool.store.staging import StagedStore, shard_path

FEATURES_DEFAULTS = FeaturesSettings().model_dump()  # the defaults live, described, in hoitool.settings.features


# What the code does beyond the config; a store made by an earlier method is not resumed with this one.
METHOD = "crops from source-resolution frames; 3D slices by nearest centre"


def pooled_cells(fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """Feature maps (T, C, h, w) -> (T, grid*grid, C): average-pooled to a fixed grid, cells row-major.

    A fixed grid keeps every store's cells comparable whatever the frame size (7x7: the map of a
    224-pixel frame at stride 32), and the array small enough to keep per frame.
    """
    cells = torch.nn.functional.adaptive_avg_pool2d(fmap.float(), grid)
    return cells.flatten(2).transpose(1, 2)


def map_content(config: dict) -> dict:
    """The content config, without the frame-map keys when maps are off: a store made before they existed resumes."""
    content = content_config(config)
    if not content.get("frame_maps"):
        content.pop("frame_maps", None)
        content.pop("frame_map_grid", None)
    if not content.get("flip"):  # likewise for the mirrored views
        content.pop("flip", None)
    return content


def mirror_boxes(boxes: np.ndarray, valid: np.ndarray, width: int) -> np.ndarray:
    """xyxy boxes (..., 4) in source pixels as they lie on the left-right mirrored frame (``x -> width - x``).

    Padding boxes (``valid`` False) are kept as they are.
    """
    mirrored = boxes.copy()
    mirrored[..., 0] = width - boxes[..., 2]
    mirrored[..., 2] = width - boxes[..., 0]
    return np.where(valid[..., None], mirrored, boxes)


class FramesLoader:
    """Worker side: the video's boxes from the boxes store and the decoded frames they were found on."""

    def __init__(self, manifest: Manifest, boxes_path: Path):
        self.manifest = manifest
        self.videos = manifest.by_id()
        self.boxes = open_store(boxes_path)

    def __call__(self, video_id: str) -> dict:
        from hoitool.video.reader import read_frames

        video = self.videos[video_id]
        item = self.boxes.read(video_id)
        unique, inverse = np.unique(item["frame_indices"], return_inverse=True)
        item["frames"] = read_frames(self.manifest.source_path(video), video.kind, unique)
        item["frame_slot"] = inverse.reshape(item["frame_indices"].shape)
        return item


class NodeFeatures:
    """Main-process side: backbone + RoIAlign / crops for every view of one video."""

    def __init__(self, config: dict):
        from hoitool.device import resolve_device
        from hoitool.features.backbones import build_backbone

        if config["mode"] not in ("roi", "crop"):
            raise UsageError(f"mode {config['mode']!r}: expected roi or crop")
        if config["crops"] not in (1, 3):
            raise UsageError(f"crops={config['crops']}: expected 1 or 3")
        self.config = config
        self.device = resolve_device(config["runtime"]["device"])
        if config["runtime"]["amp"] and self.device.type != "cuda":
            raise UsageError("runtime.amp=true needs a CUDA device (mixed precision is not used on the CPU)")
        spec = config["backbone"]
        self.backbone = build_backbone(
            spec["arch"],
            spec["layer"],
            spec["weights"],
            seed=spec["seed"],
            device=self.device,
            amp=config["runtime"]["amp"],
        )
        if config["mode"] == "crop" and self.backbone.kind != "2d":
            raise UsageError(f"mode=crop needs a 2D backbone, {spec['arch']} is {self.backbone.kind}")

    def _source_frames(self, frames: np.ndarray) -> torch.Tensor:
        """The decoded frames normalised at source resolution (T, 3, H, W): what mode=crop cuts boxes from."""
        from hoitool.features.transforms import prepare_frames

        return prepare_frames(frames, None, mean=self.backbone.mean, std=self.backbone.std, device=self.device)[0]

    def _view(self, frames: np.ndarray, source, boxes: np.ndarray, valid: np.ndarray, crop) -> tuple:
        from hoitool.features.nodes import crop_node_features, roi_node_features
        from hoitool.features.transforms import prepare_frames

        config = self.config
        images, transform = prepare_frames(
            frames, config["short_side"], crop=crop, mean=self.backbone.mean, std=self.backbone.std, device=self.device
        )
        image_boxes, empty = transform.to_image(torch.from_numpy(boxes).to(self.device))
        valid = torch.from_numpy(valid).to(self.device) & ~empty
        if config["mode"] == "roi":
            fmap = self.backbone.feature_map(images)
            nodes = roi_node_features(
                fmap,
                image_boxes,
                valid,
                self.backbone.stride,
                output_size=config["roi_size"],
                sampling_ratio=config["sampling_ratio"],
                pool=config["pool"],
            )
            frame = fmap.float().mean(dim=(-2, -1)) if config["frame_features"] else None
            cells = pooled_cells(fmap, config["frame_map_grid"]) if config["frame_maps"] else None
        else:
            # The box as this view sees it (clipped to the spatial crop), cut from the source-resolution frame.
            nodes = crop_node_features(
                source, transform.to_source(image_boxes), valid, self.backbone, crop_size=config["crop_size"]
            )
            frame = self.backbone.pooled(images) if config["frame_features"] else None
            cells = (
                pooled_cells(self.backbone.feature_map(images), config["frame_map_grid"])
                if config["frame_maps"]
                else None
            )
        return nodes, valid, frame, cells

    def __call__(self, item: dict) -> tuple[dict, dict]:
        crops = ["none"] if self.config["crops"] == 1 else [0, 1, 2]
        flips = (False, True) if self.config["flip"] else (False,)
        views: dict[str, list] = {
            "nodes": [],
            "valid": [],
            "frame_features": [],
            "frame_maps": [],
            "boxes": [],
            "frame_indices": [],
            "frame_valid": [],
        }
        for clip, flipped in ((clip, flipped) for clip in range(item["boxes"].shape[0]) for flipped in flips):
            frames = item["frames"][item["frame_slot"][clip]]
            boxes = item["boxes"][clip]
            if flipped:
                frames = np.ascontiguousarray(frames[:, :, ::-1])
                boxes = mirror_boxes(boxes, item["valid"][clip], int(item["frame_size"][1]))
            source = self._source_frames(frames) if self.config["mode"] == "crop" else None
            for crop in crops:
                nodes, valid, frame, cells = self._view(frames, source, boxes, item["valid"][clip], crop)
                views["nodes"].append(nodes.float().cpu().numpy().astype(np.float16))
                views["valid"].append(valid.cpu().numpy())
                if frame is not None:
                    views["frame_features"].append(frame.float().cpu().numpy().astype(np.float16))
                if cells is not None:
                    views["frame_maps"].append(cells.cpu().numpy().astype(np.float16))
                views["boxes"].append(boxes)
                views["frame_indices"].append(item["frame_indices"][clip])
                views["frame_valid"].append(item["frame_valid"][clip])
        arrays = {name: np.stack(values) for name, values in views.items() if values}
        arrays["frame_size"] = item["frame_size"]
        return arrays, {"views": len(views["nodes"])}


def extract_features(
    boxes_path: Path, out: Path, config: dict | FeaturesSettings, shard=None, force: bool = False
) -> StageSummary:
    config = resolved(FeaturesSettings, config)
    boxes = open_store(boxes_path)
    if boxes.kind != "boxes":
        raise UsageError(f"{boxes_path}: is a {boxes.kind} store, expected a boxes store")
    manifest_file = Path(boxes.manifest_path)
    manifest = Manifest.load(manifest_file)
    out = shard_path(Path(out), shard)
    model = NodeFeatures(config)
    if boxes.attrs.get("frames"):
        model.backbone.check_clip_length(int(boxes.attrs["frames"]))  # before any work, not at the first video
    # The backbone's fingerprint (weights, temporal mapping) and the crop method guard resuming like the config.
    guarded = {**map_content(config), "backbone_fingerprint": model.backbone.fingerprint, "method": METHOD}
    header = {"config": guarded, "upstream": boxes.fingerprint}
    staged = StagedStore(out, "features", header, force=force, what="features store")
    wanted = {video.id for video in select_shard(manifest.videos, shard)}
    videos = [video_id for video_id in boxes.video_ids if video_id in wanted]
    prov = provenance(
        "features",
        config,
        manifest_file,
        {"boxes": boxes.fingerprint, "boxes_path": str(Path(boxes_path).resolve())},
        {"backbone": model.backbone.fingerprint},
        shard,
    )
    views = boxes.attrs.get("clips", 1) * config["crops"] * (2 if config["flip"] else 1)
    return run_video_stage(
        staged,
        videos,
        FramesLoader(manifest, Path(boxes_path)),
        model,
        prov,
        config["runtime"]["workers"],
        "features",
        extra_meta={
            "views": views,
            "num_frames": boxes.attrs.get("frames"),
            "max_boxes": boxes.attrs.get("max_boxes"),
            "dim": model.backbone.dim,
            **({"frame_map_grid": config["frame_map_grid"]} if config["frame_maps"] else {}),
            # made from a partial boxes store: this store is partial too, so training on it warns as well
            **({"partial": dict(boxes.partial, upstream=str(Path(boxes_path).resolve()))} if boxes.partial else {}),
        },
    )
