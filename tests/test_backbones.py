"""Backbones: layer table vs real outputs, 3D temporal mapping, pooling, freezing (tiny random weights)."""

import pytest
import torch

from hoitool.errors import UsageError
from hoitool.features.backbones import _layer_table, _truncate, build_backbone
from hoitool.weights import load_model


def frames(count, size, seed=0):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["resnet18", "r3d_18", "mc3_18", "r2plus1d_18", "s3d"])
def test_layer_table_matches_the_networks(arch):
    """dim, spatial and temporal stride of every layer, measured on a real forward pass of the cut network."""
    model, _ = load_model(arch, "random")
    count, size = (2, 64) if arch == "resnet18" else (8, 64 if arch == "s3d" else 32)
    clip = frames(count, size)
    for layer, spec in _layer_table(arch).items():
        with torch.inference_mode():
            if arch == "resnet18":
                out = _truncate(model, arch, layer)(clip)
            else:
                out = _truncate(model, arch, layer)(clip.permute(1, 0, 2, 3)[None])[0].transpose(0, 1)
        assert out.shape == (count // spec.temporal_stride, spec.dim, size // spec.stride, size // spec.stride), layer


def test_bottleneck_resnet_dims():
    backbone = build_backbone("resnet50", None, "random")
    assert backbone.layer == "layer4" and backbone.dim == 2048 and backbone.stride == 32
    assert backbone.feature_map(frames(1, 64)).shape == (1, 2048, 2, 2)


def test_2d_feature_map_pooled_and_crops():
    backbone = build_backbone("resnet18", "layer3", "random", seed=1)
    clip = frames(5, 64)
    maps = backbone.feature_map(clip)
    assert backbone.kind == "2d" and maps.shape == (5, 256, 4, 4) and maps.dtype == torch.float32
    assert torch.allclose(backbone.feature_map(clip, batch=2), maps, atol=1e-5)  # chunking changes nothing
    assert torch.allclose(backbone.pooled(clip), maps.mean(dim=(2, 3)), atol=1e-6)
    crops = backbone.embed_crops(frames(3, 32, seed=2))
    assert crops.shape == (3, 256)
    assert torch.allclose(crops[1], backbone.feature_map(frames(3, 32, seed=2)[1:2]).mean(dim=(2, 3))[0], atol=1e-5)
    assert backbone.embed_crops(torch.zeros(0, 3, 32, 32)).shape == (0, 256)


@pytest.mark.parametrize("count, layer, steps", [(4, "layer2", 2), (6, "layer2", 3), (5, "layer4", 1)])
def test_3d_temporal_map_goes_back_to_frames_by_floor_index(count, layer, steps):
    backbone = build_backbone("r3d_18", layer, "random")
    clip = frames(count, 32)
    maps = backbone.feature_map(clip)
    with torch.inference_mode():
        direct = backbone.network(clip.permute(1, 0, 2, 3)[None])[0]  # (C, t', h, w)
    assert direct.shape[1] == steps and maps.shape == (count, backbone.dim, *direct.shape[2:])
    for i in range(count):
        assert torch.equal(maps[i], direct[:, i * steps // count]), i
    assert backbone.pooled(clip).shape == (count, backbone.dim)


def test_3d_backbone_settings_and_limits():
    backbone = build_backbone("r3d_18", None, "random")
    assert backbone.kind == "3d" and backbone.layer == "layer4" and (backbone.dim, backbone.stride) == (512, 16)
    assert backbone.mean == pytest.approx((0.43216, 0.394666, 0.37645))  # Kinetics normalisation
    assert backbone.settings["temporal_mapping"] == "floor(i * t' / T)"
    with pytest.raises(UsageError, match="2D backbone"):
        backbone.embed_crops(frames(2, 32))
    s3d = build_backbone("s3d", None, "random")
    assert s3d.feature_map(frames(5, 64)).shape == (5, 1024, 2, 2)
    with pytest.raises(UsageError, match="at least 5 frames"):
        s3d.feature_map(frames(4, 64))


def test_frozen_eval_and_fingerprints():
    backbone = build_backbone("resnet18", None, "random", seed=0, amp=True)
    assert not backbone.network.training
    assert not any(p.requires_grad for p in backbone.network.parameters())
    assert backbone.amp is False and backbone.settings["amp"] is False  # never autocast on CPU
    assert backbone.mean == pytest.approx((0.485, 0.456, 0.406))
    assert backbone.settings["weights_fingerprint"] == "random:resnet18:seed0"
    same = build_backbone("resnet18", "layer4", "random", seed=0)
    assert same.fingerprint == backbone.fingerprint
    assert torch.equal(same.feature_map(frames(1, 32)), backbone.feature_map(frames(1, 32)))
    assert build_backbone("resnet18", None, "random", seed=1).fingerprint != backbone.fingerprint
    assert build_backbone("resnet18", "layer3", "random", seed=0).fingerprint != backbone.fingerprint


def test_bad_arch_or_layer_is_a_usage_error():
    with pytest.raises(UsageError, match="unsupported backbone 'vgg16'"):
        build_backbone("vgg16", None, "random")
    with pytest.raises(UsageError, match="no layer 'layer5'"):
        build_backbone("resnet18", "layer5", "random")
    with pytest.raises(UsageError, match="no layer 'layer4'"):
        build_backbone("s3d", "layer4", "random")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_on_cuda_is_close_to_float32():
    exact = build_backbone("resnet18", None, "random", device="cuda")
    mixed = build_backbone("resnet18", None, "random", device="cuda", amp=True)
    clip = frames(2, 64)
    a, b = exact.feature_map(clip), mixed.feature_map(clip)
    assert mixed.amp and b.dtype == torch.float32 and b.device.type == "cuda"
    assert torch.allclose(a, b, rtol=2e-2, atol=2e-2 * a.abs().max().item())
