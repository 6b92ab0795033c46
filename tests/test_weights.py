"""Weights resolution: torchvision's cache, explicit files, seeded random init; never a download."""

import hashlib

import pytest
import torch
import torchvision

from hoitool.errors import HoitoolError, UsageError
from hoitool.weights import (
    ZooWeights,
    cache_path,
    default_weights_enum,
    fetch_instruction,
    load_model,
    resolve_weights,
)


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """Any attempt to download fails the test; TORCH_HOME points at an empty temporary cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


def _seeded_state(arch, seed):
    torch.manual_seed(seed)
    return torchvision.models.get_model(arch, weights=None).state_dict()


def params_equal(model, state):
    own = model.state_dict()
    return all(torch.equal(own[key], value) for key, value in state.items())


def test_random_is_seeded_and_fingerprinted():
    state, fingerprint = resolve_weights("resnet18", "random", seed=3)
    assert state is None and fingerprint == "random:resnet18:seed3"
    rng_before = torch.random.get_rng_state()
    first, fp1 = load_model("resnet18", "random", seed=3)
    second, _ = load_model("resnet18", "random", seed=3)
    other, fp2 = load_model("resnet18", "random", seed=4)
    assert torch.equal(rng_before, torch.random.get_rng_state())  # the global RNG is left alone
    assert params_equal(first, second.state_dict())
    assert not torch.equal(first.conv1.weight, other.conv1.weight)
    assert fp1 != fp2 and not first.training


def test_default_weights_come_from_torch_home_cache(tmp_path):
    enum = default_weights_enum("resnet18")
    path = cache_path(enum)
    assert path == tmp_path / "torch_home" / "hub" / "checkpoints" / enum.url.rsplit("/", 1)[1]
    path.parent.mkdir(parents=True)
    saved = _seeded_state("resnet18", 11)
    torch.save(saved, path)
    for spec in (None, "default"):
        state, fingerprint = resolve_weights("resnet18", spec)
        assert fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        assert all(torch.equal(state[k], v) for k, v in saved.items())
    model, _ = load_model("resnet18", None)
    assert params_equal(model, saved)


def test_missing_cache_file_says_how_to_fetch_it():
    with pytest.raises(HoitoolError) as info:
        resolve_weights("fasterrcnn_resnet50_fpn", None)
    message = str(info.value)
    assert "\n" not in message and not isinstance(info.value, UsageError)
    filename = default_weights_enum("fasterrcnn_resnet50_fpn").url.rsplit("/", 1)[1]
    assert f"torch_home/hub/checkpoints/{filename}" in message
    assert "get_model('fasterrcnn_resnet50_fpn', weights='DEFAULT')" in message
    assert "TORCH_HOME" in message and "--weights PATH" in message and "--weights random" in message


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "model_state", "module_prefix"])
def test_weights_file_in_common_layouts(tmp_path, wrap):
    saved = _seeded_state("resnet18", 5)
    payload = {
        "plain": saved,
        "state_dict": {"state_dict": saved, "epoch": 3},
        "model": {"model": saved},
        "model_state": {"model_state": saved, "epoch": 196, "cfg": "TRAIN:\n  ENABLE: True\n"},  # PySlowFast / zoo
        "module_prefix": {f"module.{k}": v for k, v in saved.items()},
    }[wrap]
    path = tmp_path / "w.pt"
    torch.save(payload, path)
    model, fingerprint = load_model("resnet18", str(path), seed=999)
    assert params_equal(model, saved)
    assert fingerprint == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_same_bytes_same_fingerprint_wherever_they_live(tmp_path):
    torch.save(_seeded_state("resnet18", 1), tmp_path / "a.pt")
    (tmp_path / "b.pt").write_bytes((tmp_path / "a.pt").read_bytes())
    assert resolve_weights("resnet18", tmp_path / "a.pt")[1] == resolve_weights("resnet18", tmp_path / "b.pt")[1]


def test_state_dict_without_batchnorm_counters_loads(tmp_path):
    """torchvision's pretrained files come from FrozenBatchNorm2d models, which have no num_batches_tracked."""
    saved = {k: v for k, v in _seeded_state("resnet18", 2).items() if not k.endswith("num_batches_tracked")}
    torch.save(saved, tmp_path / "frozen_bn.pth")
    model, _ = load_model("resnet18", tmp_path / "frozen_bn.pth")
    assert params_equal(model, saved)


def test_bad_weights_files_are_one_line_usage_errors(tmp_path):
    torch.save(_seeded_state("resnet34", 0), tmp_path / "r34.pt")
    incomplete = _seeded_state("resnet18", 0)
    incomplete.pop("fc.bias")
    torch.save(incomplete, tmp_path / "incomplete.pt")
    (tmp_path / "notes.txt").write_text("not weights")
    torch.save({"weights": [1, 2]}, tmp_path / "not_a_state_dict.pt")
    torch.save({**_seeded_state("resnet18", 0), "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    torch.save({"conv1.weight": torch.zeros(1, 1)}, tmp_path / "wrong_shape.pt")
    expected = {
        "r34.pt": "unexpected keys",
        "incomplete.pt": "1 missing keys (e.g. 'fc.bias')",
        "notes.txt": "not a loadable PyTorch weights file",
        "not_a_state_dict.pt": "not a state dict",
        "extra.pt": "1 unexpected keys (e.g. 'extra.weight')",
        "wrong_shape.pt": "size mismatch for conv1.weight",
        "missing.pt": "weights file not found",
    }
    for name, fragment in expected.items():
        with pytest.raises(UsageError) as info:
            load_model("resnet18", tmp_path / name)
        assert fragment in str(info.value) and "\n" not in str(info.value), name


def test_unknown_arch_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown torchvision architecture 'resnet7'"):
        load_model("resnet7", "random")
    with pytest.raises(UsageError, match="unknown torchvision architecture"):
        resolve_weights("resnet7", None)


def test_weights_outside_torchvision_use_their_own_cache_name_and_instruction(tmp_path):
    zoo = ZooWeights("https://example.org/zoo/MODEL_8x8.pyth", "import zoo; zoo.model(pretrained=True)")
    assert cache_path(zoo) == tmp_path / "torch_home" / "hub" / "checkpoints" / "MODEL_8x8.pyth"
    message = fetch_instruction("model", zoo)
    assert 'python -c "import zoo; zoo.model(pretrained=True)"' in message and "MODEL_8x8.pyth" in message
    with pytest.raises(HoitoolError, match="weights for model not found"):
        resolve_weights("model", None, zoo)
    built = []

    def builder(width):
        built.append(width)
        return torch.nn.Linear(width, 1)

    model, fingerprint = load_model("tiny", "random", seed=2, builder=builder, width=3)
    assert built == [3] and fingerprint == "random:tiny:seed2" and not model.training
