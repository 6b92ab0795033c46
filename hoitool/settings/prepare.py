"""``prepare <dataset>``: every dataset's settings and their defaults.

``hoitool prepare <dataset>`` has one option per top-level field (``--video-dir`` for ``video_dir``;
nested sections such as ``intrinsics`` only through ``--config``/``--set``). A field marked with
:func:`path_field` takes a path, recorded absolute; ``flag`` in a field's extra spells its option
another way (``--from-frames/--from-videos``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from hoitool.settings.base import Section


def path_field(default: Any, description: str) -> Any:
    """A field holding a file or folder path (or a list of them): its option is recorded as an absolute path."""
    return Field(default, description=description, json_schema_extra={"path": True})


ROOT_DESCRIPTION = "the dataset's raw folder, in its official layout"


class SyntheticSettings(Section):
    videos_per_class: int = Field(12, ge=1, description="videos rendered per class")
    frames: int = Field(24, ge=2, description="frames per rendered video")
    size: int = Field(128, ge=32, description="frame side in pixels")
    seed: int = Field(0, description="seed of the rendered scenes and the split")
    fps: int = Field(8, ge=1, description="frame rate written into the rendered videos")
    class_set: Literal["default", "sharp"] = Field(
        "default", description="default: 6 classes (local, order); sharp: 9, with the 3 cross-frame classes"
    )


class CharadesSettings(Section):
    root: str | None = path_field(None, ROOT_DESCRIPTION)
    from_frames: bool = Field(
        False,
        description="read the RGB frame folders (frames_dir) instead of the mp4 videos (video_dir)",
        json_schema_extra={"flag": "--from-frames/--from-videos"},
    )
    video_dir: str = Field("Charades_v1_480", description="folder of the mp4 videos under the root")
    frames_dir: str = Field("Charades_v1_rgb", description="folder of the frame folders under the root")
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="about this share of the training videos held out as val, whole subjects at a time",
    )
    seed: int = Field(0, description="seed of the validation split")
    strict: bool = Field(False, description="fail on a missing video instead of skipping it")


class IntrinsicsSettings(Section):
    fx: float = Field(640 / 1.1147, gt=0, description="focal length x (pixels)")
    fy: float = Field(480 / 0.8336, gt=0, description="focal length y (pixels)")
    cx: float = Field(320.0, description="principal point x (pixels)")
    cy: float = Field(240.0, description="principal point y (pixels)")


class Cad120Settings(Section):
    root: str | None = path_field(None, ROOT_DESCRIPTION)
    fold: str | None = Field(None, description="the test subject of a leave-one-subject-out fold (e.g. Subject1)")
    val: str | float = Field(0.2, description="a training subject's name, or a fraction of the training videos")
    seed: int = Field(0, description="seed of the validation split")
    strict: bool = Field(False, description="fail on a missing video instead of skipping it")
    person_margin: float = Field(0.1, ge=0.0, description="margin around the projected skeleton's box, as a fraction")
    intrinsics: IntrinsicsSettings = Field(default_factory=IntrinsicsSettings)


class Ssv2Settings(Section):
    root: str | None = path_field(None, ROOT_DESCRIPTION)
    video_dir: str = Field(".", description="folder of the <id>.webm videos, relative to the root")
    strict: bool = Field(False, description="fail on a missing video instead of skipping it")
    boxes: list[str] = path_field(
        [], "Something-Else box annotation files (one --boxes per part): the dataset's own boxes"
    )


class FolderSettings(Section):
    root: str | None = path_field(None, "a folder of videos, one sub-folder per class (or with --labels)")
    labels: str | None = path_field(
        None, "a CSV of `id,label` or `id,label1;label2` rows for a flat folder (else: one sub-folder per class)"
    )
    extensions: list[str] = Field(
        ["mp4", "avi", "webm", "mkv", "mov"], min_length=1, description="video file extensions to take"
    )
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of each class held out as val")
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of each class held out as test")
    seed: int = Field(0, description="seed of the split")
    strict: bool = Field(False, description="fail on an unreadable video instead of skipping it")
    frame_pattern: str | None = Field(
        None, description="frames of a frame folder, e.g. RGB_%d.png (others in it are ignored)"
    )


PREPARE_SETTINGS: dict[str, type[Section]] = {
    "synthetic": SyntheticSettings,
    "charades": CharadesSettings,
    "cad120": Cad120Settings,
    "ssv2": Ssv2Settings,
    "folder": FolderSettings,
}
