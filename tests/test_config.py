"""Config precedence: defaults < file (YAML/TOML) < options < --set; unknown keys refused."""

import pytest

from hoitool.config import parse_override, resolve_config
from hoitool.errors import UsageError

DEFAULTS = {"frames": 32, "model": {"layers": 1, "view": "global"}, "runtime": {"device": "auto"}}


def test_precedence_file_then_options_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("frames: 8\nmodel:\n  layers: 3\n  view: local\n")
    config = resolve_config(DEFAULTS, path, {"model.view": "baseline", "frames": None}, ["model.layers=2"])
    assert config == {"frames": 8, "model": {"layers": 2, "view": "baseline"}, "runtime": {"device": "auto"}}
    assert DEFAULTS["model"]["layers"] == 1  # defaults untouched


def test_toml_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("frames = 4\n[model]\nlayers = 2\n")
    assert resolve_config(DEFAULTS, path)["model"]["layers"] == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("framez: 1\n", "unknown config key 'framez'"),
        ("model:\n  layerz: 1\n", "unknown config key 'model.layerz'"),
        ("- a\n", "must be a mapping"),
        ("a: [\n", "cannot parse"),
    ],
)
def test_bad_files_are_one_line_usage_errors(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=message.replace("[", r"\[")) as info:
        resolve_config(DEFAULTS, path)
    assert "\n" not in str(info.value)


def test_overrides_parse_yaml_values():
    assert parse_override("model.layers=3") == ("model.layers", 3)
    assert parse_override("runtime.device=cuda:1") == ("runtime.device", "cuda:1")
    assert parse_override("x=[1, 2]") == ("x", [1, 2])
    with pytest.raises(UsageError):
        parse_override("novalue")
    with pytest.raises(UsageError, match="unknown config key 'model.depth'"):
        resolve_config(DEFAULTS, overrides=["model.depth=2"])
