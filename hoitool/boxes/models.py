"""Boxes from torchvision's Faster R-CNN: RPN proposals or full detections (docs/extraction-models.md#boxes).

* ``rpn``: class-agnostic region proposals, as GLIDN (and STRG) use on
  Charades: the RPN's decoded, clipped proposals after its own per-level NMS,
  then one class-agnostic NMS at ``nms_iou`` across levels, then the top K by
  objectness (the sigmoid of the RPN logit).
* ``detector``: the full detector's COCO detections after class-wise NMS,
  top K by score, with ``is_person`` = (label == person_label).

Boxes come back in the source frames' pixels, one :class:`FrameBoxes` per
frame; all frames of a call go through the network as one batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import cast

import numpy as np
import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.rpn import concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from hoitool.boxes.jsonl import FrameBoxes
from hoitool.errors import UsageError
from hoitool.weights import build_seeded, default_weights_enum, load_checked, resolve_weights

BOX_ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
)
DEFAULT_NMS_IOU = {"rpn": 0.7, "detector": 0.5}  # torchvision's own RPN and box-head values
# For source "rpn" (torchvision's test-time defaults for the R50 models): candidates per FPN level before the
# RPN's per-level NMS, and proposals kept after it -- far more than K, so the cross-level NMS still leaves K.
RPN_PRE_NMS_TOP_N = 1000
RPN_POST_NMS_TOP_N = 1000


class BoxModel:
    """``model(frames uint8 (N, H, W, 3)) -> list[FrameBoxes]``; frozen, eval mode."""

    def __init__(
        self,
        network,
        source: str,
        top_k: int,
        nms_iou: float,
        score_threshold: float,
        person_label: int,
        device: torch.device,
        settings: dict,
    ):
        self.network, self.source, self.top_k = network, source, top_k
        self.nms_iou, self.score_threshold, self.person_label = nms_iou, score_threshold, person_label
        self.device, self.settings = device, settings
        # Content-based: where the weights file lives, the device and the library version do not make data stale.
        stable = {k: v for k, v in settings.items() if k not in ("weights", "device", "torchvision")}
        digest = hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]
        self.fingerprint = f"{source}:{settings['arch']}:{digest}"  # digest covers the weights fingerprint

    @torch.inference_mode()
    def __call__(self, frames) -> list[FrameBoxes]:
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (N, H, W, 3), got {tuple(frames.shape)} {frames.dtype}")
        if frames.shape[0] == 0:
            return []
        images = list(frames.to(self.device).permute(0, 3, 1, 2).float().div_(255))
        height, width = frames.shape[1:3]
        if self.source == "rpn":
            results = self._proposals(images)
        else:
            results = self.network(images)
        out = []
        for result in results:
            keep = result["scores"] >= self.score_threshold
            boxes = result["boxes"][keep][: self.top_k]
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
            scores = result["scores"][keep][: self.top_k]
            labels = result["labels"][keep][: self.top_k] if "labels" in result else torch.full_like(scores, -1)
            labels = labels.long()
            out.append(
                FrameBoxes(
                    boxes.float().cpu().numpy(),
                    scores.float().cpu().numpy(),
                    labels.cpu().numpy(),
                    (labels == self.person_label).cpu().numpy()
                    if self.source == "detector"
                    else np.zeros(len(labels), bool),
                )
            )
        return out

    def _proposals(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """The RPN's scored proposals (RegionProposalNetwork.forward drops the scores, so its steps are run here)."""
        model = self.network
        original_sizes = [tuple(image.shape[-2:]) for image in images]
        batch, _ = model.transform(images)
        features = list(model.backbone(batch.tensors).values())
        rpn = model.rpn
        objectness, deltas = rpn.head(features)
        anchors = rpn.anchor_generator(batch, features)
        per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = rpn.box_coder.decode(deltas, anchors).view(len(anchors), -1, 4)
        boxes, scores = rpn.filter_proposals(proposals, objectness, batch.image_sizes, per_level)
        results = []
        for frame_boxes, frame_scores in zip(boxes, scores, strict=False):
            keep = box_ops.nms(frame_boxes, frame_scores, self.nms_iou)[: self.top_k]  # sorted by score
            results.append({"boxes": frame_boxes[keep], "scores": frame_scores[keep]})
        return model.transform.postprocess(results, batch.image_sizes, original_sizes)


def _num_classes(state: dict | None) -> int | None:
    """Classes of a detector checkpoint (so fine-tuned detectors load too); None -> torchvision's 91."""
    weight = (state or {}).get("roi_heads.box_predictor.cls_score.weight")
    return int(weight.shape[0]) if weight is not None else None


def build_box_model(
    source: str,
    top_k: int = 15,
    weights: str | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    nms_iou: float | None = None,
    score_threshold: float = 0.0,
    min_size: int | None = None,
    max_size: int | None = None,
    arch: str = "fasterrcnn_resnet50_fpn",
    person_label: int = 1,
) -> BoxModel:
    """Build the proposal/detection model; never downloads weights (see hoitool.weights).

    ``nms_iou`` defaults to 0.7 for ``rpn`` and 0.5 for ``detector``;
    ``min_size``/``max_size`` are Faster R-CNN's internal resize (shorter /
    longer side; None = the arch's torchvision default, 800/1333 or 320/640),
    which boxes are mapped back from.
    """
    if source not in DEFAULT_NMS_IOU:
        raise UsageError(f"box source must be one of {', '.join(DEFAULT_NMS_IOU)}, not {source!r}")
    if arch not in BOX_ARCHS:
        raise UsageError(f"unsupported box model {arch!r}; choose one of {', '.join(BOX_ARCHS)}")
    if top_k < 1:
        raise UsageError(f"top_k must be at least 1, got {top_k}")
    nms_iou = DEFAULT_NMS_IOU[source] if nms_iou is None else float(nms_iou)
    state, fingerprint = resolve_weights(arch, weights, default_weights_enum(arch), seed=seed)
    overrides: dict[str, int | float | None] = {"min_size": min_size, "max_size": max_size}
    if source == "rpn":  # the detector keeps its RPN as trained; only the proposals' own NMS is ours
        overrides.update(
            rpn_pre_nms_top_n_test=RPN_PRE_NMS_TOP_N, rpn_post_nms_top_n_test=RPN_POST_NMS_TOP_N, rpn_nms_thresh=nms_iou
        )
    builder = torchvision.models.get_model_builder(arch)  # every BOX_ARCHS builder returns a FasterRCNN
    network = cast(
        FasterRCNN,
        build_seeded(
            builder,
            seed,
            weights=None,
            weights_backbone=None,
            num_classes=_num_classes(state),
            box_score_thresh=score_threshold,
            box_nms_thresh=nms_iou,
            box_detections_per_img=top_k,
            **{k: v for k, v in overrides.items() if v is not None},
        ),
    )
    if state is not None:
        load_checked(network, state, f"{weights or 'default weights'} ({arch})")
    device = torch.device(device)
    network.eval().requires_grad_(False).to(device)
    rpn = network.rpn
    settings = {
        "source": source,
        "arch": arch,
        "weights": "default" if weights is None else str(weights),
        "weights_fingerprint": fingerprint,
        "top_k": top_k,
        "nms_iou": nms_iou,
        "score_threshold": score_threshold,
        "min_size": network.transform.min_size[-1],
        "max_size": network.transform.max_size,
        "rpn_pre_nms_top_n": rpn.pre_nms_top_n(),
        "rpn_post_nms_top_n": rpn.post_nms_top_n(),
        "rpn_nms_iou": rpn.nms_thresh,
        "rpn_score_threshold": rpn.score_thresh,
        "person_label": person_label if source == "detector" else None,
        "device": str(device),
        "torchvision": torchvision.__version__,
    }
    return BoxModel(network, source, top_k, nms_iou, score_threshold, person_label, device, settings)
