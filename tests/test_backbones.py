"""Backbones: torchvision's registry and graph (2D), video layer tables vs real outputs, 3D mapping, freezing."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from hoitool.errors import UsageError
from hoitool.features import backbones
from hoitool.features.backbones import (
    _layer_table,
    _truncate,
    build_backbone,
    default_layer,
    image_archs,
    measure,
    supported_backbones,
    weights_file,
)
from hoitool.features.common import nearest_slice, slice_centres
from hoitool.weights import load_model

needs_pytorchvideo = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("pytorchvideo") is None, reason="needs the video extra (pytorchvideo)"
)


def frames(count, size, seed=0):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["r3d_18", "mc3_18", "r2plus1d_18", "s3d"])
def test_layer_table_matches_the_networks(arch):
    """Video layers: dim, spatial and temporal stride of every layer, measured on a real forward pass of the cut network."""
    model, _ = load_model(arch, "random")
    count, size = 8, 64 if arch == "s3d" else 32
    clip = frames(count, size)
    for layer, spec in _layer_table(arch).items():
        with torch.inference_mode():
            out = _truncate(model, arch, layer)(clip.permute(1, 0, 2, 3)[None])[0].transpose(0, 1)
        assert out.shape == (count // spec.temporal_stride, spec.dim, size // spec.stride, size // spec.stride), layer


def test_default_resnet50_is_bit_identical_to_a_plain_torchvision_forward():
    """The feature-extraction graph up to layer4 computes exactly what torchvision's own modules do, in order."""
    backbone = build_backbone("resnet50", None, "random")
    model, _ = load_model("resnet50", "random")
    plain = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, *(model.layer1, model.layer2))
    plain.extend([model.layer3, model.layer4])
    clip = frames(2, 64)
    with torch.inference_mode():
        assert torch.equal(backbone.feature_map(clip), plain(clip))
    # The fingerprint stores made before carry (layer tables then): they still resume.
    assert backbone.fingerprint == "resnet50:layer4:b2223fc2b1d1b67c"


@pytest.mark.parametrize(
    "arch, layer",
    [("resnet18", "layer1"), ("resnet18", "layer3"), ("resnet18", "layer4.0.relu"), ("mobilenet_v3_small", None)],
)
def test_2d_layers_come_from_the_traced_graph_with_measured_channels_and_stride(arch, layer):
    """Any module or node of torchvision's graph is a layer; channels and stride are the real output's."""
    backbone = build_backbone(arch, layer, "random")
    model, _ = load_model(arch, "random")
    clip = frames(1, 64)
    with torch.inference_mode():
        node = backbone.layer
        direct = create_feature_extractor(model, {node: "out"})(clip)["out"]
    assert backbone.kind == "2d" and backbone.feature_map(clip).shape == direct.shape
    assert (backbone.dim, backbone.stride) == (direct.shape[1], 64 // direct.shape[-1])
    assert measure(backbone.network).dim == backbone.dim
    if layer is None:  # the last stage before pooling: mobilenet's `features` (then avgpool, classifier)
        assert backbone.layer == "features" == default_layer(arch)


def test_the_2d_family_is_torchvision_registry():
    archs = image_archs()
    assert set(archs) == {
        a for a in torchvision.models.list_models(module=torchvision.models) if "vit" not in a and "swin" not in a
    }
    assert {"resnet50", "vgg16", "efficientnet_b0", "convnext_tiny", "densenet121"} <= set(archs)
    assert {"r3d_18", "s3d"} <= set(supported_backbones()) and "vit_b_16" not in supported_backbones()
    assert weights_file("resnet50") == "resnet50-11ad3fa6.pth"  # the name torchvision's cache gives it


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


def test_3d_map_goes_back_to_frames_by_nearest_slice_centre():
    """Each frame gets the network's own output slice with the nearest centre (r3d_18 layer2: centres 0, 2, 4)."""
    backbone = build_backbone("r3d_18", "layer3", "random")
    clip = frames(8, 32)
    maps = backbone.feature_map(clip)
    with torch.inference_mode():
        direct = backbone.network(clip.permute(1, 0, 2, 3)[None])[0]  # (C, t', h, w)
    assert direct.shape[1] == 2 and maps.shape == (8, backbone.dim, *direct.shape[2:])
    # Centres 0 and 4: frame 2 is as near to both (the earlier wins); floor(i * 2 / 8) would give frame 3 slice 0.
    for i, j in enumerate([0, 0, 0, 1, 1, 1, 1, 1]):
        assert torch.equal(maps[i], direct[:, j]), i
    assert backbone.pooled(clip).shape == (8, backbone.dim)


def test_3d_backbone_settings_and_limits():
    backbone = build_backbone("r3d_18", None, "random")
    assert backbone.kind == "3d" and backbone.layer == "layer4" and (backbone.dim, backbone.stride) == (512, 16)
    assert backbone.mean == pytest.approx((0.43216, 0.394666, 0.37645))  # Kinetics normalisation
    assert backbone.settings["temporal_mapping"].startswith("nearest slice centre")
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


def test_bad_arch_or_layer_is_a_usage_error_naming_close_ones(monkeypatch):
    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the arch and layer were checked")

    monkeypatch.setattr(backbones, "resolve_weights", no_weights)
    with pytest.raises(UsageError, match=r"unsupported backbone 'resnet5O' \(close: resnet50"):
        build_backbone("resnet5O", None, "random")
    with pytest.raises(UsageError, match=r"backbone resnet18 has no layer 'layer5' \(close: layer4"):
        build_backbone("resnet18", "layer5", "random")
    with pytest.raises(UsageError, match=r"no layer 'layer4.1.rleu' \(close: layer4.1.relu"):
        build_backbone("resnet18", "layer4.1.rleu", "random")
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


def _rerandomise_norms(network):
    """BatchNorm scales away from zero (PyTorchVideo zero-initialises each block's last one, hiding its branch)."""
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.weight.data = torch.rand(module.weight.shape, generator=generator) + 0.5


def _support(network, count, size, pathway=0):
    """Centre slice j of the output and the input frames its value depends on (non-zero gradient)."""
    clip = torch.randn(1, 3, count, size, size, requires_grad=True, generator=torch.Generator().manual_seed(1))
    with torch.enable_grad():
        out = network(clip)
        out = out[pathway] if isinstance(out, (list, tuple)) else out
        j = out.shape[2] // 2
        (grad,) = torch.autograd.grad(out[:, :, j].sum(), clip)
    return out.shape[2], j, torch.nonzero(grad.abs().sum(dim=(0, 1, 3, 4))).flatten()


# (arch, layer, frames): long enough that the middle slice's receptive field is not cut by the clip's ends.
RECEPTIVE = [
    ("r3d_18", "layer2", 40),
    ("r3d_18", "layer3", 72),
    ("mc3_18", "layer4", 24),
    ("s3d", "mixed_3c", 40),
    ("s3d", "mixed_4f", 80),
    pytest.param("i3d_r50", "res2", 24, marks=needs_pytorchvideo),
    pytest.param("i3d_r50", "res3", 40, marks=needs_pytorchvideo),
    pytest.param("r3d_18", "layer4", 140, marks=pytest.mark.slow),
    pytest.param("r2plus1d_18", "layer4", 140, marks=pytest.mark.slow),
    pytest.param("s3d", "mixed_5c", 140, marks=pytest.mark.slow),
    pytest.param("i3d_r50", "res5", 60, marks=[needs_pytorchvideo, pytest.mark.slow]),
]


@pytest.mark.parametrize("arch, layer, count", RECEPTIVE)
def test_slice_centres_are_receptive_field_centres(arch, layer, count):
    """The centre a slice is given is the middle of the input frames it is computed from, measured by gradients."""
    backbone = build_backbone(arch, layer, "random")
    _rerandomise_norms(backbone.network)
    steps, j, frames_used = _support(backbone.network, count, backbone.stride)
    assert 0 < frames_used[0] and frames_used[-1] < count - 1, "receptive field cut by the clip: use more frames"
    centre = slice_centres(steps, backbone.temporal_stride, backbone.spec.temporal_offset)[j].item()
    assert (frames_used[0] + frames_used[-1]).item() / 2 == centre


@pytest.mark.slow
@needs_pytorchvideo
@pytest.mark.parametrize("pathway", [0, 1])
def test_slowfast_slice_centres_are_its_pathways_frames(pathway):
    """Slow slice j is computed from slow frames around linspace(0, T-1, T/4)[j]; fast slice j from frame j."""
    backbone = build_backbone("slowfast_r50", None, "random")
    _rerandomise_norms(backbone.network)
    for module in backbone.network.modules():  # lateral fast->slow fusions off: the slow pathway's own frames
        if type(module).__name__ == "FuseFastToSlow":
            nn.init.zeros_(module.conv_fast_to_slow.weight)
    count = 128
    steps, j, frames_used = _support(backbone.network, count, 32, pathway)
    slow = torch.linspace(0, count - 1, count // 4).long()  # PySlowFast's pack_pathway_output
    assert steps == (count // 4 if pathway == 0 else count)
    assert 0 < frames_used[0] and frames_used[-1] < count - 1
    if pathway == 0:
        assert set(frames_used.tolist()) <= set(slow.tolist())
    centre = slow[j].item() if pathway == 0 else j
    assert frames_used[len(frames_used) // 2].item() == centre
    assert backbone.frame_slices(count, [count // 4, count])[pathway][centre] == j  # that frame takes that slice


VIDEO_BACKBONES = [
    ("r3d_18", None),
    ("r2plus1d_18", None),
    ("mc3_18", None),
    ("s3d", None),
    ("r3d_18", "layer2"),
    pytest.param("i3d_r50", None, marks=needs_pytorchvideo),
    pytest.param("i3d_r50", "res2", marks=needs_pytorchvideo),
    pytest.param("slowfast_r50", None, marks=needs_pytorchvideo),
]


@pytest.mark.parametrize("arch, layer", VIDEO_BACKBONES)
@pytest.mark.parametrize("count", [12])
def test_every_frame_takes_the_nearest_slice_of_the_real_output(arch, layer, count):
    """Measure t' on a real forward pass; each frame's map is the output slice whose centre is nearest to it."""
    backbone = build_backbone(arch, layer, "random")
    clip = frames(count, backbone.stride)
    with torch.inference_mode():
        out = backbone.network(clip.permute(1, 0, 2, 3)[None])
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    slow = torch.linspace(0, count - 1, count // 4).long()
    inputs = [slow, torch.arange(count)] if arch == "slowfast_r50" else [torch.arange(count)]
    maps = backbone.feature_map(clip)
    channel = 0
    for direct, seen in zip(outs, inputs, strict=True):
        steps = direct.shape[2]
        if arch != "slowfast_r50":
            assert steps in (count // backbone.temporal_stride, -(-count // backbone.temporal_stride)), steps
            centres = backbone.spec.temporal_offset + backbone.temporal_stride * torch.arange(steps)
        else:
            assert steps == len(seen)  # neither pathway strides in time
            centres = seen.double()
        for i in range(count):
            distance = (centres - i).abs()
            j = int(torch.nonzero(distance == distance.min())[0])  # the nearest; the earlier on a tie
            part = maps[i, channel : channel + direct.shape[1]]
            assert torch.equal(part, direct[0, :, j]), (i, j)
        channel += direct.shape[1]
    assert channel == backbone.dim == maps.shape[1]


def test_old_floor_mapping_missed_the_nearest_slice():
    """r3d_18 layer4, 64 frames: 8 slices centred on frames 0, 8, ..., 56; floor(i * 8 / 64) lags by half a stride."""
    centres = slice_centres(8, 8)
    nearest = nearest_slice(centres, 64)
    floor = torch.arange(64) * 8 // 64
    assert torch.equal(centres, torch.arange(0, 64, 8, dtype=torch.float64))
    assert int((nearest != floor).sum()) == 21  # frames 8j+5 .. 8j+7 for j = 0..6
    assert nearest[[3, 4, 5, 12, 13, 63]].tolist() == [0, 0, 1, 1, 2, 7]


def test_slice_centres_through_a_subsampled_pathway():
    frames_seen = torch.tensor([0, 4, 8, 13])
    assert slice_centres(4, 1, 0.0, frames_seen).tolist() == [0, 4, 8, 13]
    assert slice_centres(2, 2, 0.5, frames_seen).tolist() == [2, 10.5]
