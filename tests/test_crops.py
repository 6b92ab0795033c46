"""mode=crop cuts each box from the decoded frame at source resolution (docs/extraction-models.md#node-features)."""

import numpy as np
import pytest
import torch
import torchvision
from helpers import run_cli
from torchvision.ops import roi_align
from torchvision.transforms.v2 import functional as TF

from hoitool.config import resolve_config
from hoitool.datasets.synthetic import generate
from hoitool.extract import features
from hoitool.extract.features import FEATURES_DEFAULTS, NodeFeatures
from hoitool.features.transforms import prepare_frames

HEIGHT, WIDTH = 480, 640  # a CAD-120 frame
BOX = (300, 200, 328, 228)  # a 28-px object
CROP = 112


def textured_frame():
    """Mid-grey frame with a 1-px black/white checkerboard filling BOX."""
    frame = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    x1, y1, x2, y2 = BOX
    yy, xx = np.mgrid[y1:y2, x1:x2]
    frame[y1:y2, x1:x2] = (((yy + xx) % 2) * 255)[..., None]
    return frame


def item_for(frame, boxes):
    boxes = np.asarray(boxes, np.float32).reshape(1, 1, -1, 4)
    return {
        "frames": frame[None],
        "frame_slot": np.zeros((1, 1), np.int64),
        "boxes": boxes,
        "valid": np.ones(boxes.shape[:3], bool),
        "frame_indices": np.zeros((1, 1), np.int64),
        "frame_valid": np.ones((1, 1), bool),
        "frame_size": np.array([HEIGHT, WIDTH]),
    }


@pytest.fixture(scope="module")
def cropper():
    """The features stage in mode=crop, its backbone's embedding replaced by a recorder of the crops it is given."""
    config = resolve_config(
        FEATURES_DEFAULTS,
        overrides=[
            "mode=crop",
            "backbone.arch=resnet18",
            "backbone.weights=random",
            f"crop_size={CROP}",
            "runtime.device=cpu",
        ],
    )
    model = NodeFeatures(config)
    backbone = model.backbone
    seen = []

    def record(crops, batch=64):
        seen.append(crops.clone())
        return torch.zeros(crops.shape[0], backbone.dim)

    backbone.embed_crops = record
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)

    def crops_of(item, crops=1):
        seen.clear()
        model.config = {**model.config, "crops": crops}
        model(item)
        return [c * std + mean for c in seen]  # back to [0, 1] pixels

    return crops_of


def hand_crop(frame, box, size=CROP):
    """The box cut straight out of the source frame and resized (torchvision's resized_crop, bilinear)."""
    x1, y1, x2, y2 = box
    source = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
    return TF.resized_crop(source, y1, x1, y2 - y1, x2 - x1, [size, size], antialias=True)


def contrast(image):
    return float(image[..., 4:-4, 4:-4].std())  # away from the border, where the grey around the box bleeds in


def test_fine_texture_survives_the_crop(cropper):
    frame = textured_frame()
    (crops,) = cropper(item_for(frame, [BOX]))
    crop, reference = crops[0], hand_crop(frame, BOX)
    assert crop.shape == (3, CROP, CROP)
    # Equal to the hand-made crop (up to the bilinear samples at the border, which see the grey outside the box).
    assert torch.allclose(crop[:, 2:-2, 2:-2], reference[:, 2:-2, 2:-2], atol=1e-5)
    assert contrast(reference) > 0.1 and contrast(crop) == pytest.approx(contrast(reference), rel=0.02)


def test_the_old_path_lost_the_texture():
    """Cropping the frame after resizing it to short side 224 (what mode=crop did) leaves a grey square."""
    frame = textured_frame()
    resized, transform = prepare_frames(frame[None], 224, mean=(0, 0, 0), std=(1, 1, 1))
    box, _ = transform.to_image(torch.tensor([BOX], dtype=torch.float32))
    old = roi_align(resized, [box], CROP, spatial_scale=1.0, sampling_ratio=2, aligned=True)[0]
    assert contrast(old) < 0.1 * contrast(hand_crop(frame, BOX))


def test_box_clipped_by_a_spatial_crop_is_cut_from_the_source_where_the_view_ends(cropper):
    """With 3 views of a 640x480 frame (short side 224: 298x224, square crops), the left view ends at source x=480."""
    frame = textured_frame()
    straddling = (440, 200, 520, 260)
    crops = cropper(item_for(frame, [straddling]), crops=3)
    assert len(crops) == 3 and all(c.shape[0] == 1 for c in crops)  # inside every view
    left_end = 224 * WIDTH / 298  # the left view's right edge, in source pixels
    expected = roi_align(
        torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255,
        [torch.tensor([[440.0, 200.0, left_end, 260.0]])],
        CROP,
        1.0,
        0,
        True,
    )[0]
    assert torch.allclose(crops[0][0], expected, atol=1e-4)
    full = hand_crop(frame, straddling)
    assert torch.allclose(crops[1][0][:, 2:-2, 2:-2], full[:, 2:-2, 2:-2], atol=1e-5)  # the centre view holds it all


@pytest.mark.slow
def test_a_store_made_by_the_earlier_method_is_not_resumed(tmp_path, capsys, monkeypatch):
    """Features cut the old way (or with other weights) must not be mixed with new ones in one store."""
    generate(tmp_path / "data", videos_per_class=1, num_frames=4, size=48, seed=1)
    boxes = tmp_path / "boxes.h5"
    args = ["--workers", 0, "--device", "cpu"]
    assert (
        run_cli(
            [
                "extract",
                "boxes",
                tmp_path / "data",
                "--out",
                boxes,
                "--source",
                "dataset",
                "--frames",
                2,
                "--top-k",
                2,
                *args,
            ],
            capsys,
        )[0]
        == 0
    )
    command = [
        "extract",
        "features",
        boxes,
        "--out",
        tmp_path / "f.h5",
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--mode",
        "crop",
        "--set",
        "short_side=48",
        "--set",
        "crop_size=32",
        *args,
    ]
    monkeypatch.setattr(features, "METHOD", "crops from frames resized to short_side")
    assert run_cli(command, capsys)[0] == 0
    monkeypatch.undo()
    code, _, err = run_cli(command, capsys)
    assert code == 1 and "refusing to resume" in err and "method" in err
    # Other bytes at the same weights path: the config is the same, the backbone's fingerprint is not.
    weights = tmp_path / "w.pt"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    command[command.index("random")] = str(weights)
    code, _, err = run_cli([*command, "--force"], capsys)
    assert code == 0, err
    assert run_cli(command, capsys)[0] == 0  # the same again: nothing to do
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    code, _, err = run_cli(command, capsys)
    assert code == 1 and "refusing to resume" in err and "backbone_fingerprint" in err
