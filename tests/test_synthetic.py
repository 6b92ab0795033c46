"""The synthetic demo dataset: valid, decodable, fully boxed, deterministic, and no class told by single boxes."""

from collections import Counter, defaultdict

import numpy as np
import pytest

from hoitool.boxes.jsonl import read_boxes_jsonl
from hoitool.datasets.synthetic import (
    CLASS_RULES,
    CLASSES,
    COLOURS,
    KINDS,
    OBJECT_CLASSES,
    PERSON_LABEL,
    class_splits,
    describe_classes,
    generate,
)
from hoitool.errors import UsageError
from hoitool.manifest import SPLITS, Manifest
from hoitool.video.reader import probe, read_frames

FRAMES, SIZE = 8, 64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "data"
    generate(root, videos_per_class=2, num_frames=FRAMES, size=SIZE, seed=5)
    return root


@pytest.fixture(scope="module")
def manifest(dataset):
    return Manifest.load(dataset)


@pytest.fixture(scope="module")
def boxes(dataset):
    return read_boxes_jsonl(dataset / "annotations.jsonl")


def dominant_colour(pixels: np.ndarray) -> str | None:
    """The palette colour most of the clearly coloured pixels belong to (None if there are none)."""
    pixels = pixels.reshape(-1, 3).astype(int)
    vivid = pixels[pixels.max(1) - pixels.min(1) > 60]
    if not len(vivid):
        return None
    return COLOURS[Counter(vivid.argmax(1)).most_common(1)[0][0]]


def test_manifest(manifest):
    assert manifest.dataset == "synthetic" and manifest.classes == list(CLASSES) and not manifest.multilabel
    assert len(CLASSES) >= 6 and manifest.object_classes == list(OBJECT_CLASSES)
    assert len(manifest.videos) == 2 * len(CLASSES)
    assert {video.split for video in manifest.videos} == set(SPLITS)
    for video in manifest.videos:
        assert video.kind == "video" and video.group is None and video.annotations == "annotations.jsonl"
        assert video.fps == 8.0 and video.num_frames == FRAMES
        assert manifest.source_path(video).is_file()
    per_class = Counter(video.labels[0] for video in manifest.videos if video.split == "train")
    assert all(per_class[c] >= 1 for c in range(len(CLASSES)))
    assert manifest.extra["codec"] in ("libx264", "mpeg4")
    assert sum(row["context"] == "local" for row in describe_classes()) >= 3
    assert sum(row["context"] == "global" for row in describe_classes()) >= 3


def test_every_video_decodes(manifest):
    for video in manifest.videos:
        info = probe(manifest.source_path(video), "video")
        assert (info.num_frames, info.height, info.width) == (FRAMES, SIZE, SIZE)
        assert info.fps == pytest.approx(8.0)


def test_boxes_for_every_frame_match_the_pixels(manifest, boxes):
    for video in manifest.videos:
        frames = read_frames(manifest.source_path(video), "video", np.arange(FRAMES))
        assert sorted(boxes[video.id]) == list(range(FRAMES))
        for turn in video.extra["turns"]:
            for index in range(*turn["frames"]):
                item = boxes[video.id][index]
                assert item.is_person.tolist() == [True, False]
                assert item.labels.tolist() == [PERSON_LABEL, OBJECT_CLASSES.index(turn["object_kind"])]
                assert (item.boxes >= 0).all() and (item.boxes <= SIZE).all()
                assert ((item.boxes[:, 2:] - item.boxes[:, :2]) > 2).all()
                person, thing = (np.round(box).astype(int) for box in item.boxes)
                assert person[2] <= thing[0] or thing[2] <= person[0], "the two boxes never overlap"
                image = frames[index]
                assert dominant_colour(image[person[1]:person[3], person[0]:person[2]]) == turn["person_colour"]
                assert dominant_colour(image[thing[1]:thing[3], thing[0]:thing[2]]) == turn["object_colour"]


def test_class_rules_hold(manifest):
    for video in manifest.videos:
        rule = CLASS_RULES[video.labels[0]]
        turns = video.extra["turns"]
        shifts = [(COLOURS.index(t["object_colour"]) - COLOURS.index(t["person_colour"])) % 3 for t in turns]
        if rule.context == "local":
            assert shifts == [rule.shift] * 3
        else:
            assert sorted(shifts) == [0, 1, 2]  # the colour relation varies: it cannot tell a global class
            assert tuple(t["object_kind"] for t in turns) == rule.kind_order


def test_single_boxes_are_the_same_in_every_class(manifest):
    """Video i of every class shows exactly the same people and objects; only pairing and order differ."""
    cast = defaultdict(set)
    for video in manifest.videos:
        turns = video.extra["turns"]
        assert sorted(t["person_colour"] for t in turns) == sorted(COLOURS)
        assert sorted(t["object_colour"] for t in turns) == sorted(COLOURS)
        assert sorted(t["object_kind"] for t in turns) == sorted(KINDS)
        people = frozenset((t["person_colour"], t["side"]) for t in turns)
        objects = frozenset((t["object_colour"], t["object_kind"]) for t in turns)
        cast[video.extra["scene"]].add((people, objects))
    assert len(cast) == 2 and all(len(looks) == 1 for looks in cast.values())


def test_deterministic(tmp_path, dataset):
    again = tmp_path / "again"
    generate(again, videos_per_class=2, num_frames=FRAMES, size=SIZE, seed=5)
    for name in ("manifest.json", "annotations.jsonl"):
        assert (again / name).read_bytes() == (dataset / name).read_bytes()
    for video in sorted((dataset / "videos").iterdir()):
        assert (again / "videos" / video.name).read_bytes() == video.read_bytes(), video.name
    other = tmp_path / "other"
    generate(other, videos_per_class=2, num_frames=FRAMES, size=SIZE, seed=6)
    assert (other / "annotations.jsonl").read_bytes() != (dataset / "annotations.jsonl").read_bytes()


def test_regenerating_smaller_removes_stale_videos(tmp_path):
    root = tmp_path / "data"
    generate(root, videos_per_class=2, num_frames=3, size=32)
    manifest = generate(root, videos_per_class=1, num_frames=3, size=32, codec="mpeg4")
    assert sorted(p.name for p in (root / "videos").iterdir()) == sorted(f"{v.id}.mp4" for v in manifest.videos)
    assert manifest.extra["codec"] == "mpeg4"
    assert probe(manifest.source_path(manifest.videos[0]), "video").num_frames == 3


def test_splits_and_arguments():
    assert class_splits(12, 0).count("train") == 8 and class_splits(12, 0).count("test") == 2
    assert sorted(class_splits(3, 0)) == ["test", "train", "val"]
    assert {class_splits(2, 0)[0], class_splits(2, 1)[0]} == {"val", "test"}
    assert class_splits(1, 4) == ["train"]
    for bad in ({"videos_per_class": 0}, {"num_frames": 2}, {"size": 33}, {"fps": 0}):
        with pytest.raises(UsageError):
            generate("unused", **bad)
