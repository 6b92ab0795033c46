"""RPN proposals and detector detections from a tiny random-weight Faster R-CNN (64-128 px internal size)."""

import numpy as np
import pytest
import torch
import torchvision

from hoitool.boxes.models import build_box_model
from hoitool.errors import UsageError

TINY = {"min_size": 64, "max_size": 128}


@pytest.fixture(scope="module")
def frames():
    """Three frames larger than the model's internal size, so boxes must be mapped back to reach the edges."""
    return torch.randint(0, 256, (3, 96, 160, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def rpn():
    return build_box_model("rpn", top_k=5, weights="random", seed=0, **TINY)


@pytest.fixture(scope="module")
def rpn_out(rpn, frames):
    return rpn(frames)


def check_frame_boxes(item, top_k, height, width):
    assert item.boxes.dtype == np.float32 and item.boxes.shape == (len(item.scores), 4)
    assert item.scores.dtype == np.float32 and item.labels.dtype == np.int64 and item.is_person.dtype == bool
    assert 0 < len(item.scores) <= top_k
    assert (item.boxes[:, 0] >= 0).all() and (item.boxes[:, 1] >= 0).all()
    assert (item.boxes[:, 2] <= width).all() and (item.boxes[:, 3] <= height).all()
    assert (item.boxes[:, 2] >= item.boxes[:, 0]).all() and (item.boxes[:, 3] >= item.boxes[:, 1]).all()
    assert (np.diff(item.scores) <= 0).all()  # best first


def test_rpn_proposals_are_class_agnostic_top_k_in_source_pixels(rpn_out):
    assert len(rpn_out) == 3
    for item in rpn_out:
        check_frame_boxes(item, 5, 96, 160)
        assert len(item.scores) == 5  # an untrained RPN proposes far more than 5 boxes
        assert (item.labels == -1).all() and not item.is_person.any()
        assert ((item.scores > 0) & (item.scores < 1)).all()  # sigmoid of the objectness logit
    # the internal image is 64x106: only boxes mapped back to source pixels can reach the far edges
    assert max(item.boxes[:, 2].max() for item in rpn_out) > 130
    assert max(item.boxes[:, 3].max() for item in rpn_out) > 80


def test_rpn_proposals_do_not_overlap_beyond_nms_iou(rpn_out, rpn):
    for item in rpn_out:
        iou = torchvision.ops.box_iou(torch.from_numpy(item.boxes), torch.from_numpy(item.boxes))
        assert (iou.triu(diagonal=1) <= rpn.nms_iou + 1e-4).all()


def test_batched_equals_one_frame_at_a_time(rpn, rpn_out, frames):
    for index, item in enumerate(rpn_out):
        alone = rpn(frames[index : index + 1])[0]
        np.testing.assert_allclose(alone.boxes, item.boxes, atol=1e-2)
        np.testing.assert_allclose(alone.scores, item.scores, atol=1e-4)


def test_seed_determinism_and_fingerprint(rpn, rpn_out, frames):
    again = build_box_model("rpn", top_k=5, weights="random", seed=0, **TINY)
    assert again.fingerprint == rpn.fingerprint and again.settings == rpn.settings
    for a, b in zip(again(frames), rpn_out, strict=False):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    other = build_box_model("rpn", top_k=5, weights="random", seed=1, **TINY)
    assert other.fingerprint != rpn.fingerprint
    assert not np.array_equal(other(frames[:1])[0].boxes, rpn_out[0].boxes)
    assert build_box_model("rpn", top_k=6, weights="random", seed=0, **TINY).fingerprint != rpn.fingerprint
    assert rpn.settings["weights_fingerprint"] == "random:fasterrcnn_resnet50_fpn:seed0"
    assert (rpn.settings["rpn_post_nms_top_n"], rpn.settings["nms_iou"]) == (1000, 0.7)


def test_score_threshold_drops_low_objectness(rpn_out, frames):
    threshold = float(np.median(rpn_out[0].scores))
    model = build_box_model("rpn", top_k=5, weights="random", seed=0, score_threshold=threshold, **TINY)
    item = model(frames[:1])[0]
    assert 0 < len(item.scores) < 5 and (item.scores >= threshold).all()


def test_weights_file_gives_the_same_model(tmp_path, rpn, rpn_out, frames):
    path = tmp_path / "frcnn.pth"
    torch.save({"model": rpn.network.state_dict()}, path)
    loaded = build_box_model("rpn", top_k=5, weights=str(path), seed=123, **TINY)
    for a, b in zip(loaded(frames), rpn_out, strict=False):
        np.testing.assert_array_equal(a.boxes, b.boxes)
    assert loaded.fingerprint != rpn.fingerprint and loaded.settings["weights"] == str(path)


def test_detector_detections_with_classes_and_person_flag(frames):
    model = build_box_model("detector", top_k=4, weights="random", seed=0, **TINY)
    assert model.settings["nms_iou"] == 0.5  # torchvision's class-wise default
    out = model(frames[:2])
    for item in out:
        check_frame_boxes(item, 4, 96, 160)
        assert ((item.labels >= 1) & (item.labels < 91)).all()  # 0 is background
        np.testing.assert_array_equal(item.is_person, item.labels == 1)
    label = int(out[0].labels[0])
    flagged = build_box_model("detector", top_k=4, weights="random", seed=0, person_label=label, **TINY)
    item = flagged(frames[:1])[0]
    np.testing.assert_array_equal(item.is_person, item.labels == label)
    assert item.is_person[0]


def test_detector_with_other_class_count_loads(tmp_path, frames):
    torch.manual_seed(0)
    fine_tuned = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=4
    )
    torch.save(fine_tuned.state_dict(), tmp_path / "four_classes.pth")
    model = build_box_model("detector", top_k=3, weights=str(tmp_path / "four_classes.pth"), **TINY)
    item = model(frames[:1])[0]
    assert ((item.labels >= 1) & (item.labels < 4)).all()


def test_bad_arguments():
    with pytest.raises(UsageError, match="box source"):
        build_box_model("gt", weights="random")
    with pytest.raises(UsageError, match="unsupported box model"):
        build_box_model("rpn", weights="random", arch="retinanet_resnet50_fpn")
    with pytest.raises(UsageError, match="top_k"):
        build_box_model("rpn", top_k=0, weights="random")
    model = build_box_model("rpn", top_k=2, weights="random", **TINY)
    with pytest.raises(ValueError, match="uint8"):
        model(torch.zeros(1, 8, 8, 3))
    assert model(torch.zeros(0, 8, 8, 3, dtype=torch.uint8)) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(rpn_out, frames):
    model = build_box_model("rpn", top_k=5, weights="random", seed=0, device="cuda", **TINY)
    for a, b in zip(model(frames), rpn_out, strict=False):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.5)
