"""The dataset-preparer registry: names, unknown names, and a dataset added as one module (library call and CLI)."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import typer
import yaml
from helpers import run_cli

import hoitool.datasets as datasets_package
from hoitool.cli.app import app, prepare_app
from hoitool.cli.prepare import add_prepare_commands
from hoitool.datasets import registry
from hoitool.datasets.common import prepare_dataset
from hoitool.datasets.registry import get_preparer, list_preparers, register_preparer
from hoitool.errors import UsageError
from hoitool.settings.prepare import PREPARE_SETTINGS

BUILT_IN = ["cad120", "charades", "folder", "ssv2", "synthetic"]

# A sixth dataset as its author would write it: one module in hoitool/datasets/ that registers itself.
TOY_MODULE = textwrap.dedent(
    '''
    from pathlib import Path

    from pydantic import Field

    from hoitool.datasets.common import SkipLog, write_prepared
    from hoitool.datasets.registry import register_preparer
    from hoitool.manifest import Manifest, VideoEntry
    from hoitool.settings.base import Section
    from hoitool.settings.prepare import path_field

    BUILDS = []


    class ToySettings(Section):
        root: str | None = path_field(None, "the raw folder")
        count: int = Field(2, ge=1, description="videos listed")
        val: str | float = Field(0.5, description="a subject or a fraction")
        tags: list[str] = Field([], description="tags recorded in the manifest")
        shuffle: bool = Field(False, description="a flag")


    @register_preparer("toyset", ToySettings)
    def build(config: ToySettings, out: Path) -> Manifest:
        """A toy dataset: COUNT videos named after the root's files."""
        BUILDS.append(config)
        videos = [VideoEntry(id=f"v{i}", source=f"v{i}.mp4", labels=[i % 2], split="train") for i in range(config.count)]
        manifest = Manifest(dataset="toyset", classes=["a", "b"], multilabel=False, videos=videos)
        manifest.extra["tags"] = config.tags
        return write_prepared(manifest, out, SkipLog())
    '''
)


@pytest.fixture
def toyset(tmp_path, monkeypatch):
    """The toy module placed on the datasets package's path, discovered by a fresh registry; gone afterwards."""
    list_preparers()  # the built-in ones first, so the copy below holds them
    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "toyset.py").write_text(TOY_MODULE)
    monkeypatch.setattr(datasets_package, "__path__", [*datasets_package.__path__, str(folder)])
    monkeypatch.setattr(registry, "_PREPARERS", dict(registry._PREPARERS))
    monkeypatch.setattr(registry, "_discovered", [])
    yield
    sys.modules.pop("hoitool.datasets.toyset", None)


def test_the_built_in_preparers_are_listed_with_their_settings():
    assert set(BUILT_IN) <= set(list_preparers()) and list_preparers() == sorted(list_preparers())
    for name, schema in PREPARE_SETTINGS.items():
        preparer = get_preparer(name)
        assert preparer.name == name and preparer.settings is schema and preparer.summary


def test_an_unknown_dataset_is_a_usage_error_naming_the_known_ones(tmp_path):
    with pytest.raises(UsageError, match=r"unknown dataset 'kinetics' \(known: cad120, charades, folder, ssv2"):
        get_preparer("kinetics")
    with pytest.raises(UsageError, match="unknown dataset 'kinetics'"):
        prepare_dataset("kinetics", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'folder' is already registered"):
        register_preparer("folder", PREPARE_SETTINGS["folder"])(lambda config, out: None)


def test_every_top_level_setting_is_an_option_of_its_subcommand():
    """Declared once: each field of a preparer's schema is an option of `prepare <name>` (sections: --set only)."""
    group = typer.main.get_command(app).commands["prepare"]
    assert sorted(group.commands) == list_preparers()
    for name in list_preparers():
        schema = get_preparer(name).settings
        options = {opt for param in group.commands[name].params for opt in param.opts}
        nested = {key for key, field in schema.model_fields.items() if hasattr(field.annotation, "model_fields")}
        wanted = {"--" + key.replace("_", "-") for key in schema.model_fields if key not in nested}
        assert wanted <= options, f"prepare {name}: no option for {sorted(wanted - options)}"
    assert "--from-videos" in {opt for param in group.commands["charades"].params for opt in param.secondary_opts}


def test_a_dataset_module_is_discovered_and_prepared_from_python(toyset, tmp_path):
    assert "toyset" in list_preparers()
    toy = sys.modules["hoitool.datasets.toyset"]
    raw = tmp_path / "raw"
    raw.mkdir()
    out = tmp_path / "out"
    manifest = prepare_dataset("toyset", out, {"root": str(raw), "count": 3})
    assert [video.id for video in manifest.videos] == ["v0", "v1", "v2"]
    assert json.loads((out / ".hoitool-dataset.json").read_text()) == {
        "format": "hoitool.dataset/1",
        "dataset": "toyset",
    }
    assert yaml.safe_load((out / "config.resolved.yaml").read_text()) == {
        "root": str(raw),
        "count": 3,
        "val": 0.5,
        "tags": [],
        "shuffle": False,
    }
    prepare_dataset("toyset", out, toy.ToySettings(root=str(raw), count=3))  # the same config, as an instance
    assert len(toy.BUILDS) == 1
    with pytest.raises(UsageError, match=r"a different config \(count changed\)"):
        prepare_dataset("toyset", out, {"root": str(raw), "count": 4})
    prepare_dataset("toyset", out, {"root": str(raw), "count": 4}, force=True)
    assert len(toy.BUILDS) == 2 and len(json.loads((out / "manifest.json").read_text())["videos"]) == 4


@pytest.mark.parametrize(
    "config, message",
    [
        ({"count": 0}, "config key 'count' = 0: must be greater than or equal to 1"),
        ({"count": "three"}, "config key 'count' = 'three': must be a valid integer"),
        ({"cuont": 3}, "unknown config key 'cuont'"),
        ({}, "--root: the dataset's raw folder is required"),
        ({"root": "/no/such/folder"}, "/no/such/folder: dataset root folder not found"),
    ],
)
def test_a_bad_config_is_refused_before_out_is_touched(toyset, tmp_path, config, message):
    list_preparers()
    with pytest.raises(UsageError, match=message):
        prepare_dataset("toyset", tmp_path / "out", config)
    assert not (tmp_path / "out").exists() and sys.modules["hoitool.datasets.toyset"].BUILDS == []


def test_a_registered_dataset_gets_a_cli_subcommand_with_its_options(toyset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare_app, "registered_commands", list(prepare_app.registered_commands))
    list_preparers()
    add_prepare_commands(prepare_app, ["toyset"])
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.chdir(tmp_path)
    args = [
        "prepare",
        "toyset",
        "--out",
        "out",
        "--root",
        "raw",
        "--count",
        "2",
        "--val",
        "0.25",
        "--tags",
        "x",
        "--tags",
        "y",
    ]
    code, stdout, err = run_cli([*args, "--shuffle"], capsys)
    assert code == 0, err
    assert "toyset" in stdout and "train videos" in stdout
    config = yaml.safe_load((tmp_path / "out" / "config.resolved.yaml").read_text())
    assert config == {"root": str(raw), "count": 2, "val": 0.25, "tags": ["x", "y"], "shuffle": True}
    code, _, err = run_cli([*args, "--val", "Subject3"], capsys)  # a union option takes either kind
    assert code == 2 and "a different config (shuffle, val changed)" in err
    code, stdout, _ = run_cli(["prepare", "toyset", "--out", "out2", "--val", "Subject3", "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(stdout)["val"] == "Subject3" and not (tmp_path / "out2").exists()
    code, _, err = run_cli(["prepare", "toyset", "--out", "out3", "--root", "raw", "--count", "0"], capsys)
    assert code == 2 and "config key 'count' = 0" in err and not (tmp_path / "out3").exists()
    code, stdout, _ = run_cli(["prepare", "toyset", "--help"], capsys)
    assert code == 0 and "COUNT videos named after" in stdout and "--no-shuffle" in stdout


@pytest.mark.parametrize("name", ["cad120", "charades", "folder", "ssv2"])
def test_each_setting_is_a_keyword_of_its_prepare_function(name):
    """The builds pass the settings on by name, so a key the function does not take is caught here, not by a user."""
    import importlib
    import inspect

    function = getattr(importlib.import_module(f"hoitool.datasets.{name}"), f"prepare_{name}")
    keys = set(get_preparer(name).settings.model_fields) - {"root"}
    assert keys <= set(inspect.signature(function).parameters) - {"root", "out"}
