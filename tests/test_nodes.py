"""Frame preprocessing + box mapping, and RoI / crop node features against direct torchvision calls."""

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from hoitool.errors import UsageError
from hoitool.features.backbones import build_backbone
from hoitool.features.nodes import crop_node_features, roi_node_features
from hoitool.features.transforms import BoxTransform, prepare_frames

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


@pytest.fixture(scope="module")
def resnet18():
    return build_backbone("resnet18", "layer3", "random", seed=0)


def rand_frames(count, height, width, seed=0):
    return torch.randint(
        0, 256, (count, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_resize_and_normalise():
    video, transform = prepare_frames(rand_frames(2, 48, 80).numpy(), short_side=24, mean=MEAN, std=STD)
    assert video.shape == (2, 3, 24, 40) and video.dtype == torch.float32
    assert transform == BoxTransform(0.5, 0.5, 0.0, 0.0, 40, 24)
    flat = np.full((1, 10, 10, 3), 51, np.uint8)
    video, transform = prepare_frames(flat, short_side=None, mean=MEAN, std=STD)
    expected = (0.2 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert torch.allclose(video[0, :, 3, 3], expected, atol=1e-6)
    assert transform == BoxTransform(1.0, 1.0, 0.0, 0.0, 10, 10)


@pytest.mark.parametrize(
    "height, width, crop, offset",
    [
        (40, 100, "left", (0, 0)),
        (40, 100, "center", (0, 30)),
        (40, 100, 2, (0, 60)),
        (100, 40, "top", (0, 0)),
        (100, 40, 1, (30, 0)),
        (100, 40, "bottom", (60, 0)),
    ],
)
def test_three_crops_along_the_long_side(height, width, crop, offset):
    source = rand_frames(1, height, width)
    full, _ = prepare_frames(source, short_side=None, mean=MEAN, std=STD)
    video, transform = prepare_frames(source, short_side=None, crop=crop, mean=MEAN, std=STD)
    y, x = offset
    assert video.shape == (1, 3, 40, 40) and (transform.offset_y, transform.offset_x) == (y, x)
    assert torch.equal(video, full[:, :, y : y + 40, x : x + 40])
    smaller, transform = prepare_frames(source, short_side=None, crop=crop, crop_size=20, mean=MEAN, std=STD)
    assert smaller.shape == (1, 3, 20, 20) and (transform.width, transform.height) == (20, 20)


def test_boxes_follow_the_pixels_through_resize_and_crop():
    """A bright rectangle drawn in source pixels is where the mapped box says it is."""
    source = np.zeros((1, 60, 120, 3), np.uint8)
    source[0, 12:36, 64:96] = 255  # box (64, 12, 96, 36)
    video, transform = prepare_frames(source, short_side=30, crop="center", mean=(0, 0, 0), std=(1, 1, 1))
    box, empty = transform.to_image(np.array([[64.0, 12.0, 96.0, 36.0]], np.float32))
    assert not empty[0] and box.dtype == np.float32
    x1, y1, x2, y2 = box[0]
    assert (x1, y1, x2, y2) == pytest.approx((17.0, 6.0, 30.0, 18.0))  # scale 0.5, offset x 15, clipped at 30
    image = video[0, 0]
    assert image[int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2)].min() > 0.9
    outside = torch.ones_like(image, dtype=torch.bool)
    outside[int(y1) - 1 : int(y2) + 1, int(x1) - 1 :] = False
    assert image[outside].max() < 0.1
    back = transform.to_source(np.array([[x1, y1, 29.0, y2]], np.float32))
    assert back[0] == pytest.approx([64.0, 12.0, 88.0, 36.0])


def test_box_clipping_marks_boxes_outside_the_crop_empty():
    transform = BoxTransform(1.0, 1.0, 60.0, 0.0, 40, 40)  # right crop of a 40x100 frame
    boxes = torch.tensor([[[0.0, 0.0, 30.0, 20.0], [50.0, 5.0, 80.0, 25.0], [99.5, 0.0, 100.0, 40.0]]])
    mapped, empty = transform.to_image(boxes)
    assert mapped.dtype == torch.float32 and empty.shape == (1, 3)
    assert empty.tolist() == [[True, False, True]]
    assert mapped[0, 1].tolist() == [0.0, 5.0, 20.0, 25.0]
    halved, empty = BoxTransform(0.5, 0.5, 0.0, 0.0, 50, 20).to_image(np.array([[3, 3, 9, 9], [3, 3, 4, 9]]))
    assert halved.dtype == np.float32 and halved.tolist() == [[1.5, 1.5, 4.5, 4.5], [1.5, 1.5, 2.0, 4.5]]
    assert empty.tolist() == [False, True]  # integer boxes are scaled as floats, not truncated


def test_bad_crop_settings_are_usage_errors():
    with pytest.raises(UsageError, match="crop must be"):
        prepare_frames(rand_frames(1, 10, 20), None, crop="middle")
    with pytest.raises(UsageError, match="larger than the resized frame"):
        prepare_frames(rand_frames(1, 10, 20), None, crop="center", crop_size=12)


def direct_roi(feature_map, boxes, valid, stride, pool):
    out = torch.zeros(*valid.shape, feature_map.shape[1])
    for t in range(valid.shape[0]):
        for k in range(valid.shape[1]):
            if valid[t, k]:
                bins = roi_align(
                    feature_map[t : t + 1],
                    [boxes[t, k][None]],
                    7,
                    spatial_scale=1 / stride,
                    sampling_ratio=2,
                    aligned=True,
                )[0]
                out[t, k] = bins.amax(dim=(1, 2)) if pool == "max" else bins.mean(dim=(1, 2))
    return out


def random_boxes(count, slots, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(count, slots, 2, generator=g) * size * 0.7
    extent = torch.rand(count, slots, 2, generator=g) * size * 0.3 + 1
    return torch.cat([corner, corner + extent], dim=-1)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_roi_node_features_equal_roi_align_box_by_box(pool):
    feature_map = torch.randn(3, 8, 6, 10, generator=torch.Generator().manual_seed(1))
    boxes = random_boxes(3, 4, 80.0)
    valid = torch.tensor([[True, True, False, True], [False] * 4, [True, False, True, True]])
    nodes = roi_node_features(feature_map, boxes, valid, stride=8, pool=pool)
    assert nodes.shape == (3, 4, 8)
    assert torch.allclose(nodes, direct_roi(feature_map, boxes, valid, 8, pool), atol=1e-6)
    assert torch.equal(nodes[~valid], torch.zeros(int((~valid).sum()), 8))
    from_numpy = roi_node_features(feature_map, boxes.numpy(), valid.numpy(), stride=8, pool=pool)
    assert torch.equal(from_numpy, nodes)


def test_roi_pools_where_the_box_is():
    """On a map whose value is the x index, the average over a box is its centre in map units (aligned)."""
    stride = 4
    feature_map = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    boxes = torch.tensor([[[8.0, 8.0, 24.0, 24.0]]])
    node = roi_node_features(feature_map, boxes, torch.ones(1, 1, dtype=torch.bool), stride, pool="avg")
    assert node.item() == pytest.approx(16 / stride - 0.5, abs=1e-5)


def test_roi_with_no_valid_box_is_all_zeros():
    nodes = roi_node_features(torch.randn(2, 5, 4, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool), 16)
    assert nodes.shape == (2, 3, 5) and not nodes.any()


def test_crop_node_features_embed_each_box_crop(resnet18):
    video, _ = prepare_frames(rand_frames(2, 48, 64), None, mean=resnet18.mean, std=resnet18.std)
    boxes = random_boxes(2, 3, 48.0, seed=3)
    valid = torch.tensor([[True, False, True], [True, True, False]])
    nodes = crop_node_features(video, boxes, valid, resnet18, crop_size=32, batch=2)
    assert nodes.shape == (2, 3, resnet18.dim)
    assert not nodes[~valid].any()
    for t, k in valid.nonzero().tolist():
        crop = roi_align(video[t : t + 1], [boxes[t, k][None]], 32, spatial_scale=1.0, sampling_ratio=0, aligned=True)
        assert torch.allclose(nodes[t, k], resnet18.embed_crops(crop)[0], atol=1e-5), (t, k)
    assert torch.allclose(crop_node_features(video, boxes, valid, resnet18, crop_size=32, batch=64), nodes, atol=1e-5)
    empty = crop_node_features(video, boxes, torch.zeros(2, 3, dtype=torch.bool), resnet18, crop_size=32)
    assert empty.shape == (2, 3, resnet18.dim) and not empty.any()


def test_crop_node_features_refuse_a_3d_backbone():
    video = torch.randn(4, 3, 32, 32)
    with pytest.raises(UsageError, match="2D backbone"):
        crop_node_features(
            video, torch.zeros(4, 1, 4), torch.ones(4, 1, dtype=torch.bool), build_backbone("r3d_18", None, "random")
        )


def test_3d_feature_map_to_roi_nodes():
    """The tiny video path end to end: r3d_18 on 4 frames of 32x32, boxes through the transform."""
    backbone = build_backbone("r3d_18", "layer3", "random")
    video, transform = prepare_frames(rand_frames(4, 32, 48), 32, crop="center", mean=backbone.mean, std=backbone.std)
    source_boxes = np.array([[[8, 4, 30, 28], [0, 0, 6, 6]]] * 4, np.float32)  # the second is outside the crop
    boxes, empty = transform.to_image(source_boxes)
    maps = backbone.feature_map(video)
    nodes = roi_node_features(maps, boxes, ~empty, backbone.stride)
    assert maps.shape == (4, 256, 4, 4) and nodes.shape == (4, 2, 256)
    assert empty[:, 1].all() and not nodes[:, 1].any() and nodes[:, 0].any()
    assert torch.equal(nodes[0], nodes[3])  # layer3 has one temporal step for 4 frames
