"""The synthetic demo dataset: valid, decodable, fully boxed, deterministic, and no class told by single boxes."""

from collections import Counter, defaultdict

import numpy as np
import pytest

from hoitool.boxes.jsonl import read_boxes_jsonl
from hoitool.datasets.synthetic import (
    CLASS_RULES,
    CLASS_SETS,
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
    assert sum(row["context"] == "order" for row in describe_classes()) >= 3
    assert manifest.extra["class_context"] == {rule.name: rule.context for rule in CLASS_RULES}
    assert "class_set" not in manifest.extra


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
                assert dominant_colour(image[person[1] : person[3], person[0] : person[2]]) == turn["person_colour"]
                assert dominant_colour(image[thing[1] : thing[3], thing[0] : thing[2]]) == turn["object_colour"]


def check_class_rules(manifest, rules):
    for video in manifest.videos:
        rule = rules[video.labels[0]]
        turns = video.extra["turns"]
        shifts = [(COLOURS.index(t["object_colour"]) - COLOURS.index(t["person_colour"])) % 3 for t in turns]
        if rule.context == "local":
            assert shifts == [rule.shift] * 3
        elif rule.context == "order":
            assert sorted(shifts) == [0, 1, 2]  # the colour relation varies: it cannot tell an order class
            assert tuple(t["object_kind"] for t in turns) == rule.kind_order
        else:  # cross-frame: the pair with the rule's shift in turns 1, 3, 5; the two others once each between
            pairs = [(t["person_colour"], t["object_colour"]) for t in turns]
            assert len(turns) == 5 and pairs[0] == pairs[2] == pairs[4] and len(set(pairs)) == 3
            assert shifts[0] == rule.returns and sorted(shifts[1:4]) == [0, 1, 2]
        ends = [t["frames"][1] for t in turns]
        assert [t["frames"][0] for t in turns] == [0, *ends[:-1]] and ends[-1] == video.num_frames


def test_class_rules_hold(manifest):
    check_class_rules(manifest, CLASS_RULES)


def test_sharp_class_set_adds_cross_frame_classes_with_the_same_cast(tmp_path):
    """class_set="sharp": 9 classes; every class version of a scene shows the same people and objects, and the six
    non-local classes the same three pairs (so no frame tells them apart)."""
    rules = CLASS_SETS["sharp"]
    manifest = generate(tmp_path / "sharp", videos_per_class=2, num_frames=10, size=32, seed=1, class_set="sharp")
    assert manifest.classes == [rule.name for rule in rules] and manifest.extra["class_set"] == "sharp"
    assert [row["context"] for row in describe_classes("sharp")].count("cross-frame") == 3
    check_class_rules(manifest, rules)
    cast, pairs = defaultdict(set), defaultdict(set)
    for video in manifest.videos:
        turns = video.extra["turns"]
        people = frozenset((t["person_colour"], t["side"]) for t in turns)
        objects = frozenset((t["object_colour"], t["object_kind"]) for t in turns)
        assert len(people) == len(objects) == 3
        cast[video.extra["scene"]].add((people, objects))
        if rules[video.labels[0]].context != "local":
            pairs[video.extra["scene"]].add(frozenset((t["person_colour"], t["object_colour"]) for t in turns))
    assert all(len(looks) == 1 for looks in cast.values()) and all(len(p) == 1 for p in pairs.values())
    with pytest.raises(UsageError):
        generate(tmp_path / "x", videos_per_class=1, num_frames=4, size=32, class_set="sharp")
    with pytest.raises(UsageError):
        generate(tmp_path / "y", videos_per_class=1, class_set="nine")


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
