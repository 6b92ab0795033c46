"""I3D-R50 and SlowFast-R50 (PyTorchVideo's definitions): zoo-layout weights, pathways, the features stage."""

import hashlib
import importlib.util
import sys
import warnings

import numpy as np
import pytest
import torch
from helpers import run_cli

from hoitool.errors import HoitoolError, UsageError
from hoitool.features.backbones import build_backbone
from hoitool.features.nodes import roi_node_features
from hoitool.features.video_models import WEIGHTS, slow_frames
from hoitool.store import open_store
from hoitool.weights import cache_path

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytorchvideo") is None, reason="needs the video extra (pip install 'hoitool[video]')"
)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def zoo_state(arch, seed):
    """A full PyTorchVideo model's state dict (head included), as the zoo's .pyth files hold it."""
    with warnings.catch_warnings():  # importing it scripts a module with the deprecated torch.jit
        warnings.simplefilter("ignore")
        from pytorchvideo.models import hub

    torch.manual_seed(seed)
    return getattr(hub, arch)(pretrained=False).state_dict()


def clip(count, size=64, seed=0):
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["i3d_r50", pytest.param("slowfast_r50", marks=pytest.mark.slow)])
def test_weights_in_the_model_zoo_layout_load(tmp_path, arch):
    state = zoo_state(arch, 7)
    path = tmp_path / WEIGHTS[arch].url.rsplit("/", 1)[1]  # I3D_8x8_R50.pyth / SLOWFAST_8x8_R50.pyth
    torch.save({"model_state": state, "epoch": 196}, path)
    backbone = build_backbone(arch, None, str(path))
    kept = backbone.network.state_dict()
    prefix = "" if arch == "i3d_r50" else "blocks."  # the SlowFast trunk keeps the blocks as a ModuleList
    key = f"{prefix}0.multipathway_blocks.0.conv.weight" if arch == "slowfast_r50" else "0.conv.weight"
    assert torch.equal(
        kept[key], state["blocks.0.conv.weight" if arch == "i3d_r50" else "blocks.0.multipathway_blocks.0.conv.weight"]
    )
    for name, value in kept.items():  # every parameter of the cut network is the file's
        source = name if arch == "slowfast_r50" else f"blocks.{name}"
        assert torch.equal(value, state[source]), name
    assert backbone.settings["weights_fingerprint"] == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_default_weights_are_read_from_torch_hub_cache(tmp_path):
    path = cache_path(WEIGHTS["i3d_r50"])
    assert path == tmp_path / "torch_home" / "hub" / "checkpoints" / "I3D_8x8_R50.pyth"
    with pytest.raises(HoitoolError) as info:
        build_backbone("i3d_r50")
    message = str(info.value)
    assert "\n" not in message and "I3D_8x8_R50.pyth" in message and "hub.i3d_r50(pretrained=True)" in message
    assert "--weights PATH" in message
    path.parent.mkdir(parents=True)
    state = zoo_state("i3d_r50", 3)
    torch.save({"model_state": state}, path)
    backbone = build_backbone("i3d_r50", "res2")
    assert torch.equal(
        backbone.network.state_dict()["1.res_blocks.0.branch1_conv.weight"],
        state["blocks.1.res_blocks.0.branch1_conv.weight"],
    )


def test_weights_of_another_model_are_a_one_line_usage_error(tmp_path):
    torch.save({"model_state": zoo_state("i3d_r50", 0)}, tmp_path / "i3d.pyth")
    with pytest.raises(UsageError, match="weights do not fit the model") as info:
        build_backbone("slowfast_r50", None, str(tmp_path / "i3d.pyth"))
    assert "\n" not in str(info.value)


def test_missing_pytorchvideo_says_how_to_install_it(monkeypatch):
    for name in [name for name in sys.modules if name.startswith("pytorchvideo")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pytorchvideo", None)  # import pytorchvideo now fails
    with pytest.raises(UsageError, match=r"need PyTorchVideo: pip install 'hoitool\[video\]'"):
        build_backbone("i3d_r50", None, "random")


def test_i3d_maps_and_settings():
    backbone = build_backbone("i3d_r50", None, "random")
    assert backbone.kind == "3d" and (backbone.dim, backbone.stride, backbone.temporal_stride) == (2048, 32, 2)
    assert backbone.mean == (0.45, 0.45, 0.45) and backbone.std == (0.225, 0.225, 0.225)
    assert backbone.settings["pytorchvideo"] == "0.1.5" and backbone.settings["temporal_offset"] == 0.5
    maps = backbone.feature_map(clip(8))
    assert maps.shape == (8, 2048, 2, 2)
    for pair in range(4):  # 4 slices centred between frames 2j and 2j+1: each pair shares one
        assert torch.equal(maps[2 * pair], maps[2 * pair + 1])
        assert not torch.equal(maps[2 * pair], maps[(2 * pair + 2) % 8])
    with pytest.raises(UsageError, match="at least 2 frames"):
        backbone.feature_map(clip(1))


def test_slowfast_pathways_are_mapped_to_frames_and_concatenated():
    backbone = build_backbone("slowfast_r50", None, "random")
    assert (backbone.dim, backbone.stride) == (2304, 32)
    frames = clip(8)
    with torch.inference_mode():
        slow, fast = backbone.network(frames.permute(1, 0, 2, 3)[None])
    assert slow.shape == (1, 2048, 2, 2, 2) and fast.shape == (1, 256, 8, 2, 2)
    assert slow_frames(8).tolist() == [0, 7] and slow_frames(32).tolist() == [0, 4, 8, 13, 17, 22, 26, 31]
    maps = backbone.feature_map(frames)
    for i in range(8):  # slow slices centred on frames 0 and 7; the fast pathway has a slice per frame
        assert torch.equal(maps[i, :2048], slow[0, :, 0 if i <= 3 else 1]), i
        assert torch.equal(maps[i, 2048:], fast[0, :, i]), i
    # RoIAlign on the joint map = RoIAlign on each pathway, concatenated (PySlowFast's RoI head).
    boxes = torch.tensor([[[4.0, 8.0, 50.0, 60.0]]] * 8)
    valid = torch.ones(8, 1, dtype=torch.bool)
    joint = roi_node_features(maps, boxes, valid, 32)
    parts = [roi_node_features(maps[:, :2048], boxes, valid, 32), roi_node_features(maps[:, 2048:], boxes, valid, 32)]
    assert torch.equal(joint, torch.cat(parts, dim=-1))
    with pytest.raises(UsageError, match="multiple of 4"):
        backbone.feature_map(clip(6))


@pytest.fixture(scope="module")
def boxes_store(tmp_path_factory):
    from hoitool.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("video-backbones")
    generate(root / "data", videos_per_class=1, num_frames=8, size=64, seed=3)
    return root


def boxes(root, capsys, frames):
    path = root / f"boxes{frames}.h5"
    if not path.exists():
        code, _, err = run_cli(
            [
                "extract",
                "boxes",
                root / "data",
                "--out",
                path,
                "--source",
                "dataset",
                "--frames",
                frames,
                "--top-k",
                3,
                "--workers",
                0,
            ],
            capsys,
        )
        assert code == 0, err
    return path


@pytest.mark.parametrize("arch, dim", [("i3d_r50", 2048), pytest.param("slowfast_r50", 2304, marks=pytest.mark.slow)])
def test_features_store_end_to_end(boxes_store, capsys, arch, dim):
    out = boxes_store / f"{arch}.h5"
    code, _, err = run_cli(
        [
            "extract",
            "features",
            boxes(boxes_store, capsys, 8),
            "--out",
            out,
            "--backbone",
            arch,
            "--weights",
            "random",
            "--device",
            "cpu",
            "--workers",
            0,
            "--set",
            "short_side=64",
        ],
        capsys,
    )
    assert code == 0, err
    store = open_store(out)
    assert store.kind == "features" and store.attrs["dim"] == dim
    arrays = store.read(store.video_ids[0])
    assert arrays["nodes"].shape == (1, 8, 3, dim) and arrays["frame_features"].shape == (1, 8, dim)
    assert np.isfinite(arrays["nodes"]).all() and arrays["nodes"][arrays["valid"]].any()
    assert store.provenance["weights"]["backbone"].startswith(f"{arch}:res5:")


def test_clip_length_that_slowfast_cannot_take_is_refused_before_any_work(boxes_store, capsys):
    out = boxes_store / "refused.h5"
    code, _, err = run_cli(
        [
            "extract",
            "features",
            boxes(boxes_store, capsys, 6),
            "--out",
            out,
            "--backbone",
            "slowfast_r50",
            "--weights",
            "random",
            "--device",
            "cpu",
            "--workers",
            0,
        ],
        capsys,
    )
    assert code == 2 and "multiple of 4" in err and "got 6" in err
    assert not out.exists() and not list(boxes_store.glob("refused.h5*"))


def test_list_backbones(capsys, monkeypatch):
    from hoitool.features import backbones

    archs = ["mobilenet_v3_small", "r3d_18", "resnet50", "s3d", "i3d_r50", "slowfast_r50"]
    assert set(archs) <= set(backbones.supported_backbones())
    monkeypatch.setattr(backbones, "supported_backbones", lambda: archs)  # all ~75 rows take a while on 2 cores
    code, out, _ = run_cli(["extract", "features", "--list-backbones"], capsys)
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert code == 0 and set(archs) <= set(lines) and "$TORCH_HOME/hub/checkpoints/" in out
    assert "res5*" in lines["i3d_r50"] and "dim 2304" in lines["slowfast_r50"]
    assert "layer layer4" in lines["resnet50"] and "resnet50-11ad3fa6.pth (torchvision)" in lines["resnet50"]
    assert "layer features" in lines["mobilenet_v3_small"]  # the layer build_backbone takes by default
    assert "I3D_8x8_R50.pyth (PyTorchVideo model zoo)" in lines["i3d_r50"] and "not installed" not in lines["i3d_r50"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "resnet5O"], "error: unsupported backbone 'resnet5O' (close: resnet50"),
        (
            ["--backbone", "resnet18", "--layer", "layer5"],
            "error: backbone resnet18 has no layer 'layer5' (close: layer4",
        ),
    ],
)
def test_unknown_backbone_or_layer_is_one_line_before_any_work(boxes_store, capsys, args, message):
    out = boxes_store / "unknown.h5"
    code, _, err = run_cli(
        ["extract", "features", boxes(boxes_store, capsys, 8), "--out", out, *args, "--weights", "random"], capsys
    )
    assert code == 2 and err.startswith(message) and err.count("error:") == 1, err
    assert not list(boxes_store.glob("unknown.h5*"))
