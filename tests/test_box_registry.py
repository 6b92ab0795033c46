"""The box-source registry: the four built-in sources, the config's choice from it, and a fifth source in one file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from hoitool.boxes.jsonl import FrameBoxes
from hoitool.boxes.registry import (
    IMPORT_FILE,
    MANIFEST_BOXES,
    MODEL,
    get_box_source,
    list_box_sources,
    register_box_source,
    unregister_box_source,
)
from hoitool.errors import HoitoolError, UsageError
from hoitool.settings import validate
from hoitool.settings.boxes import BoxesSettings
from hoitool.store import open_store


def test_the_built_in_sources_and_what_they_need():
    assert list_box_sources() == ["dataset", "detector", "import", "rpn"]
    needs = {name: get_box_source(name).needs for name in list_box_sources()}
    assert needs == {"dataset": MANIFEST_BOXES, "detector": MODEL, "import": IMPORT_FILE, "rpn": MODEL}
    assert all(get_box_source(name).summary for name in list_box_sources())
    with pytest.raises(UsageError, match=r"unknown box source 'rnp' \(known: dataset, detector, import, rpn\)"):
        get_box_source("rnp")


def test_the_config_takes_only_registered_sources_and_help_lists_them():
    import typer

    from hoitool.cli.app import app

    with pytest.raises(UsageError) as error:
        validate(BoxesSettings, {"source": "yolo"})
    assert str(error.value) == (
        "config key 'source' = 'yolo': must be a registered box source (dataset, detector, import, rpn)"
    )
    command = typer.main.get_command(app).commands["extract"].commands["boxes"]  # what --help renders
    (option,) = [param for param in command.params if param.name == "source"]
    assert option.metavar == "[dataset|detector|import|rpn]"
    assert "rpn (Faster R-CNN region proposals" in option.help and "default: rpn" in option.help


def test_import_needs_its_file_before_any_work(tmp_path):
    source = get_box_source("import")
    with pytest.raises(UsageError, match="source=import needs --import FILE"):
        source.check({"import_file": None})
    with pytest.raises(UsageError, match="boxes file to import not found"):
        source.check({"import_file": str(tmp_path / "missing.jsonl")})


class DiagonalBoxes:
    """The fake source's box function: in frame i, one box [i, i, i + 2, i + 3] scoring 1 / (i + 1)."""

    weights = {"diagonal": "v1"}

    def __call__(self, item: dict) -> list[list[FrameBoxes]]:
        return [[_box(int(index)) for index in row] for row in item["indices"]]


def _box(index: int) -> FrameBoxes:
    box = np.array([[index, index, index + 2, index + 3]], np.float32)
    return FrameBoxes(box, np.array([1 / (index + 1)], np.float32), np.array([7]), np.array([False]))


@dataclass(frozen=True)
class DiagonalSource:
    """A fifth source, registered in-process: all it takes is this class and one register call."""

    name: str = "diagonal"
    summary: str = "a test source"
    needs: str = "nothing"

    def check(self, config: dict) -> None:
        if config["top_k"] > 8:
            raise UsageError("diagonal gives one box per frame; top_k above 8 is a mistake")

    def read(self, manifest: Any, video: Any, indices: Any, config: dict) -> dict:
        if video.id.endswith("1"):
            raise HoitoolError(f"video {video.id!r}: refused by the diagonal source")
        return {}

    def start(self, config: dict) -> DiagonalBoxes:
        return DiagonalBoxes()


@pytest.fixture
def diagonal():
    register_box_source(DiagonalSource())
    yield
    unregister_box_source("diagonal")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from hoitool.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("registry") / "data"
    generate(root, videos_per_class=1, num_frames=8, size=64, seed=3)
    return root


def test_a_fifth_source_registered_in_process_runs_the_stage(diagonal, data, tmp_path):
    from hoitool.extract.boxes import extract_boxes

    assert "diagonal" in list_box_sources()
    config = {"source": "diagonal", "frames": 4, "top_k": 3, "runtime": {"workers": 0}}
    with pytest.raises(UsageError, match="top_k above 8"):  # its check runs before anything is written
        extract_boxes(data, tmp_path / "refused.h5", {**config, "top_k": 9})
    assert not list(tmp_path.iterdir())
    summary = extract_boxes(data, tmp_path / "boxes.h5", config)
    store = open_store(tmp_path / "boxes.h5")
    assert store.attrs["source"] == "diagonal" and store.provenance["weights"] == {"diagonal": "v1"}
    failed = {record["video"] for record in summary.failed}
    assert failed and failed == {"syn0001"}  # a read failure is that video's alone
    assert set(store.video_ids) and not set(store.video_ids) & failed
    arrays = store.read(store.video_ids[0])
    indices = arrays["frame_indices"][0]  # (T,) of the one clip
    np.testing.assert_array_equal(arrays["boxes"][0, :, 0], np.stack([_box(int(i)).boxes[0] for i in indices]))
    np.testing.assert_array_equal(arrays["valid"][0], [[True, False, False]] * 4)  # one box, padded to K = 3
    np.testing.assert_array_equal(arrays["labels"][0, :, 0], [7] * 4)


def test_unregistered_source_is_refused_again(data, tmp_path):
    from hoitool.extract.boxes import extract_boxes

    with pytest.raises(UsageError, match="must be a registered box source"):
        extract_boxes(data, tmp_path / "boxes.h5", {"source": "diagonal"})
