"""Dual attention wired into the stages: frame maps in the features store, the data path, train/eval/report, PNGs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hoitool.errors import UsageError
from hoitool.extract.features import map_content, pooled_cells
from hoitool.settings.features import FeaturesSettings


def test_pooled_cells_are_the_mean_of_each_grid_cell_row_major():
    fmap = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    cells = pooled_cells(fmap, 2)
    assert cells.shape == (2, 4, 3)
    for frame in range(2):
        for channel in range(3):
            grid = fmap[frame, channel].numpy()
            by_hand = [grid[r : r + 2, c : c + 2].mean() for r in (0, 2) for c in (0, 2)]  # row-major cells
            np.testing.assert_allclose(cells[frame, :, channel].numpy(), by_hand)


def test_frame_map_keys_guard_a_store_only_when_maps_are_on():
    off = map_content(FeaturesSettings().model_dump())
    assert "frame_maps" not in off and "frame_map_grid" not in off  # a store made before the option resumes
    on = map_content(FeaturesSettings(frame_maps=True, frame_map_grid=4).model_dump())
    assert on["frame_maps"] is True and on["frame_map_grid"] == 4


def _object_run(path, object_logits, object_targets):
    """A hand-made run directory of a dual-attention run: 2 videos x 2 views, 3 actions, 2 object slots."""
    import json

    from hoitool.runs import write_outputs

    path.mkdir(parents=True)
    info = {"kind": "teacher", "view": "global", "seed": 0, "multilabel": False, "classes": ["a", "b", "c"]}
    info.update(dataset="toy", label="dual-attention (nodes, trn)", method={"name": "dual_attention"})
    (path / "run.json").write_text(json.dumps(info))
    targets = np.eye(3, dtype=np.float32)[[0, 0, 1, 1]]
    logits = targets * 3.0
    extra = {"object_logits": object_logits, "object_targets": object_targets}
    write_outputs(path, ["v0", "v0", "v1", "v1"], [0, 1, 0, 1], ["test"] * 4, logits, targets, {}, extra=extra)
    return path


def test_eval_object_top1_fuses_views_per_slot_and_leaves_null_slots_out(tmp_path, capsys):
    from helpers import run_cli

    from hoitool.eval.evaluate import evaluate_runs
    from hoitool.runs import load_run

    # 2 objects + null (index 2). v0: slot 0 is object 1, slot 1 null; v1: slot 0 is object 0, slot 1 object 1.
    targets = np.array([[1, 2], [1, 2], [0, 1], [0, 1]])
    logits = np.zeros((4, 2, 3), dtype=np.float32)
    logits[0, 0] = [0, 5, 0]  # v0 view 0: object 1 (right) ...
    logits[1, 0] = [4, 0, 0]  # ... view 1: object 0, less sure: the fused (max) probabilities pick object 1
    logits[2, 0] = logits[3, 0] = [0, 3, 0]  # v1 slot 0: object 1, wrong
    logits[2, 1] = logits[3, 1] = [0, 3, 0]  # v1 slot 1: object 1, right
    logits[0, 1] = logits[1, 1] = [9, 0, 0]  # v0 slot 1 is null: never counted, whatever it says
    run = load_run(_object_run(tmp_path / "run", logits, targets))
    assert set(run.extra) == {"object_logits", "object_targets"}
    record = evaluate_runs([run], split="test")
    assert record["metrics"]["object_top1"] == 2 / 3  # v0 slot 0 right, v1 slot 0 wrong, v1 slot 1 right
    assert record["metrics"]["accuracy"] == 1.0
    code, out, _ = run_cli(["eval", tmp_path / "run"], capsys)
    assert code == 0 and "object top-1" in out and "66.67" in out


def test_synthetic_videos_carry_object_labels_in_order_of_appearance(tmp_path):
    from hoitool.datasets.synthetic import generate
    from hoitool.nn.dual_attention import object_slot_targets, object_vocabulary

    manifest = generate(tmp_path / "data", videos_per_class=1, num_frames=4, size=32, seed=0)
    for video in manifest.videos:
        turns = [turn["object_kind"] for turn in video.extra["turns"]]
        assert video.objects == list(dict.fromkeys(turns)) and sorted(video.objects) == ["ball", "bottle", "box"]
    classes = object_vocabulary(manifest.object_classes, [video.objects for video in manifest.videos])
    assert classes == ["ball", "box", "bottle"]  # the manifest's order; 'person' (boxes only) left out
    first = manifest.videos[0]
    assert object_slot_targets(first.objects, classes) == [classes.index(name) for name in first.objects[:2]]


def test_report_shows_the_method_with_top5_and_object_top1(tmp_path, capsys):
    from helpers import run_cli

    logits = np.zeros((4, 2, 3), dtype=np.float32)
    logits[:, 0, 1] = 5.0  # slot 0 always says object 1
    logits[:, 1, 2] = 5.0  # slot 1 always null
    right = np.array([[1, 2]] * 4)  # object 1 in slot 0: top-1 = 1
    wrong = np.array([[0, 2]] * 4)  # object 0: top-1 = 0
    first = _object_run(tmp_path / "da0", logits, right)
    second = _object_run(tmp_path / "da1", logits, wrong)
    code, out, _ = run_cli(["report", first, second, "--out", tmp_path / "report"], capsys)
    assert code == 0
    table = (tmp_path / "report" / "report.md").read_text()
    assert "Object top-1 (%)" in table and "Top-5 accuracy (%)" not in table  # 3 classes: top-5 undefined
    row = next(line for line in table.splitlines() if "dual-attention (nodes, trn)" in line)
    assert "| 2 |" in row and "50.00 ± 70.71" in row  # object top-1 over the two runs: 1 and 0
    import csv

    with open(tmp_path / "report" / "report.csv", newline="") as handle:
        (record,) = csv.DictReader(handle)
    assert float(record["object_top1_mean"]) == 0.5 and record["top5_accuracy_mean"] == ""


# -- training: the method on a tiny store (make_features, as test_train) --------------------------

TINY = {
    "method__name": "dual_attention",
    "dual_attention__hidden": 16,
    "dual_attention__prior_hidden": 8,
    "dual_attention__attention_dim": 8,
    "dual_attention__head_hidden": 8,
    "dual_attention__dropout": 0.0,
}


def with_objects(features, every: int = 1):
    """Give the tiny store's manifest object labels that follow the class (slot 1 null for class 0)."""
    from hoitool.manifest import Manifest
    from hoitool.store import open_store

    path = open_store(features).manifest_path
    manifest = Manifest.load(path)
    for number, video in enumerate(manifest.videos):
        label = video.labels[0]
        video.objects = [] if number % every else [f"obj{label}"] + ([f"obj{(label + 1) % 3}"] if label else [])
    manifest.save(path)
    return manifest


def test_train_teacher_dual_attention_writes_object_outputs_and_eval_reports_them(tmp_path, capsys):
    from helpers import run_cli
    from PIL import Image
    from test_train import make_features, request

    from hoitool.eval.evaluate import evaluate_runs
    from hoitool.runs import load_run
    from hoitool.train.loop import train

    features = make_features(tmp_path, split_sizes={"train": 12, "val": 4, "test": 6})
    with_objects(features)
    train(request(features, tmp_path / "run", train__epochs=2, **TINY))
    run = load_run(tmp_path / "run")
    assert run.info["method"]["name"] == "dual_attention" and run.info["label"] == "dual-attention (nodes, trn)"
    assert run.info["method"]["object_classes"] == ["obj0", "obj1", "obj2"]
    assert run.extra["object_logits"].shape == (22, 2, 4) and run.extra["object_targets"].shape == (22, 2)
    import json

    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_ce", "loss_ce_first", "loss_object", "loss_object_first", "grad_share_object"} <= set(records[0])
    record = evaluate_runs([run], split="test")
    assert 0.0 <= record["metrics"]["object_top1"] <= 1.0 and record["metrics"]["top5_accuracy"] is None
    code, out, err = run_cli(["eval", tmp_path / "run", "--attention", "test00"], capsys)
    assert code == 0 and "object top-1" in out and "accuracy (top-1)" in out
    with Image.open(tmp_path / "run" / "eval" / "attention" / "test00.png") as image:  # boxes on grey: no video
        image.verify()
        assert image.format == "PNG"
    code, _, err = run_cli(["eval", tmp_path / "run", "--attention", "nosuchvideo"], capsys)
    assert code == 2 and "nosuchvideo: not a video of" in err
    code, _, err = run_cli(["show", tmp_path / "run", "test01", "--out", tmp_path / "show.png"], capsys)
    assert code == 0 and "dual attention" in err  # hoitool show draws the same maps for this kind of run
    with Image.open(tmp_path / "show.png") as image:
        image.verify()


def test_a_dataset_without_object_labels_or_frame_maps_is_refused_before_any_file(tmp_path, capsys):
    import pytest
    from helpers import run_cli
    from test_train import make_features, request

    from hoitool.errors import UsageError
    from hoitool.train.loop import train

    features = make_features(tmp_path)  # its manifest has no object labels
    with pytest.raises(UsageError, match="no video of dataset 'tiny' has object labels"):
        train(request(features, tmp_path / "run", **TINY))
    assert not (tmp_path / "run").exists()
    with_objects(features)
    with pytest.raises(UsageError, match="holds no frame maps"):
        train(request(features, tmp_path / "run", dual_attention__regions="cells", **TINY))
    assert not (tmp_path / "run").exists()
    argv = ["train-teacher", features, "--view", "global", "--out", tmp_path / "run", "--method", "dual_attention"]
    code, _, err = run_cli([*argv, "--set", "dual_attention.object_slots=3"], capsys)
    assert code == 2 and "object_slots" in err and not (tmp_path / "run").exists()


def cell_features(root, grid: int = 2, frames: int = 3, dim: int = 8):
    """A tiny store with frame maps: one cell of each frame carries the class (and its object), the others noise."""
    from hoitool.manifest import Manifest, VideoEntry
    from hoitool.store import StagedStore

    rng = np.random.default_rng(0)
    prototypes = rng.normal(size=(3, dim)) * 3
    videos = [
        VideoEntry(id=f"{split}{n:02d}", source="missing.mp4", labels=[n % 3], split=split, objects=[f"obj{n % 3}"])
        for split, count in (("train", 12), ("val", 3), ("test", 3))
        for n in range(count)
    ]
    manifest_path = root / "manifest.json"
    Manifest(dataset="cells", classes=["a", "b", "c"], multilabel=False, videos=videos).save(manifest_path)
    staged = StagedStore(root / "cells.h5", "features", {"config": {}, "upstream": None})
    for number, video in enumerate(videos):
        maps = rng.normal(size=(1, frames, grid * grid, dim))
        maps[0, :, number % (grid * grid)] += prototypes[video.labels[0]]
        corner = rng.uniform(0, 40, size=(1, frames, 2, 2))
        staged.save(
            video.id,
            {
                "nodes": rng.normal(size=(1, frames, 2, dim)).astype(np.float16),
                "valid": np.ones((1, frames, 2), dtype=bool),
                "boxes": np.concatenate([corner, corner + 20], axis=-1).astype(np.float32),
                "frame_size": np.array([64, 64]),
                "frame_valid": np.ones((1, frames), dtype=bool),
                "frame_indices": np.arange(frames)[None],
                "frame_maps": maps.astype(np.float16),
            },
        )
    staged.finalize(
        {"manifest": str(manifest_path.resolve())},
        {"views": 1, "dim": dim, "num_frames": frames, "max_boxes": 2, "frame_map_grid": grid},
    )
    return root / "cells.h5"


def test_map_cells_train_and_their_attention_is_drawn_as_a_png(tmp_path):
    from PIL import Image
    from test_train import request

    from hoitool.runs import load_run
    from hoitool.train.loop import train
    from hoitool.train.methods.dual_attention import attention_maps

    features = cell_features(tmp_path)
    settings = dict(TINY, dual_attention__regions="cells", dual_attention__temporal="mean")
    train(request(features, tmp_path / "run", train__epochs=2, **settings))
    run = load_run(tmp_path / "run")
    assert run.info["label"] == "dual-attention (cells, mean)" and run.extra["object_logits"].shape == (18, 2, 4)
    (path,) = attention_maps(tmp_path / "run", ["test01"], tmp_path / "maps")
    assert path == tmp_path / "maps" / "test01.png"
    with Image.open(path) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 100


# -- the synthetic set from the CLI, as a new user runs it ------------------------------------------

TINY_CLI = [
    "--method",
    "dual_attention",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--epochs",
    "2",
    "--batch-size",
    "6",
    "--da-hidden",
    "16",
    "--prior-hidden",
    "8",
    "--attention-dim",
    "8",
    "--head-hidden",
    "8",
]


@pytest.mark.slow
def test_synthetic_set_from_the_cli_train_eval_report_and_attention_pngs(tmp_path, capsys):
    import json

    from helpers import run_cli
    from PIL import Image

    from hoitool.datasets.synthetic import generate
    from hoitool.store import open_store

    generate(tmp_path / "data", videos_per_class=2, num_frames=8, size=64, seed=0)  # 12 videos: 3 val, 3 test
    boxes = ["extract", "boxes", tmp_path / "data", "--out", tmp_path / "boxes.h5", "--source", "dataset"]
    assert run_cli([*boxes, "--frames", "4", "--top-k", "2", "--workers", "0"], capsys)[0] == 0
    features = ["extract", "features", tmp_path / "boxes.h5", "--out", tmp_path / "f.h5", "--backbone", "resnet18"]
    features += ["--weights", "random", "--device", "cpu", "--workers", "0", "--frame-maps"]
    assert run_cli([*features, "--set", "short_side=64", "--set", "frame_map_grid=2"], capsys)[0] == 0
    store = open_store(tmp_path / "f.h5")
    assert store.attrs["frame_map_grid"] == 2 and store.read(store.video_ids[0])["frame_maps"].shape == (1, 4, 4, 512)
    for regions in ("nodes", "cells"):
        run = tmp_path / regions
        argv = ["train-teacher", tmp_path / "f.h5", "--view", "global", "--out", run, "--regions", regions]
        assert run_cli([*argv, *TINY_CLI], capsys)[0] == 0
        code, out, _ = run_cli(["eval", run, "--attention", "syn0003"], capsys)
        assert code == 0 and all(name in out for name in ("accuracy (top-1)", "top-5 accuracy", "object top-1"))
        metrics = json.loads((run / "eval" / "metrics_test.json").read_text())["metrics"]
        assert {"accuracy", "top5_accuracy", "object_top1"} <= set(metrics) and metrics["object_top1"] is not None
        with Image.open(run / "eval" / "attention" / "syn0003.png") as image:  # drawn on the decoded frames
            image.verify()
            assert image.format == "PNG"
    code, out, _ = run_cli(["report", tmp_path / "nodes", tmp_path / "cells", "--out", tmp_path / "report"], capsys)
    table = (tmp_path / "report" / "report.md").read_text()
    assert code == 0 and "dual-attention (nodes, trn)" in table and "dual-attention (cells, trn)" in table
    assert "Top-5 accuracy (%)" in table and "Object top-1 (%)" in table


def test_object_classes_and_targets_of_each_publishers_manifest():
    """SSv2 placeholders and Charades objects are free names (sorted); CAD-120 types follow object_classes."""
    from hoitool.datasets.cad120 import OBJECT_CLASSES as CAD_CLASSES
    from hoitool.manifest import Manifest, VideoEntry
    from hoitool.train.methods.dual_attention import object_targets, run_object_classes

    def manifest(object_classes, objects):
        videos = [
            VideoEntry(id=f"v{i}", source="x", labels=[0], split="train", objects=o) for i, o in enumerate(objects)
        ]
        return Manifest(
            dataset="d", classes=["a"], multilabel=False, videos=videos, object_classes=list(object_classes)
        )

    ssv2 = manifest(["hand", "object 0", "object 1"], [["wireless mouse", "mouse pad"], ["cup"], []])
    assert run_object_classes(ssv2, 2, "ssv2") == ["cup", "mouse pad", "wireless mouse"]
    targets = object_targets(ssv2, ["v0", "v1", "v2"], ["cup", "mouse pad", "wireless mouse"], 2)
    assert targets.tolist() == [[2, 1], [0, 3], [-1, -1]]  # null = 3; a video without objects is not supervised
    cad = manifest(CAD_CLASSES, [["bowl", "cup"], ["microwave"]])
    assert run_object_classes(cad, 2, "cad") == [name for name in CAD_CLASSES if name in {"bowl", "cup", "microwave"}]
    charades = manifest([], [["bed", "blanket", "pillow"], ["door"]])
    assert run_object_classes(charades, 1, "charades") == ["bed", "door"]  # one slot: the first name of each video
    with pytest.raises(UsageError, match="no video of dataset 'd' has object labels"):
        run_object_classes(manifest([], [[], []]), 2, "none")


def test_multilabel_actions_train_with_sigmoid_priors(tmp_path):
    from test_train import make_features, request

    from hoitool.runs import load_run
    from hoitool.train.loop import train

    features = make_features(tmp_path, multilabel=True, split_sizes={"train": 6, "val": 2, "test": 2})
    with_objects(features)
    train(request(features, tmp_path / "run", train__epochs=1, **TINY))
    run = load_run(tmp_path / "run")
    assert run.multilabel and run.extra["object_logits"].shape == (10, 2, 4)


@pytest.mark.slow
def test_cad120_fixture_from_the_cli_trains_on_its_object_types(tmp_path, capsys):
    """The publisher's layout (test_cad120_layout's fixture): prepare, extract, train on actions + object types, eval."""
    import json

    from helpers import run_cli
    from test_cad120_layout import write_cad120

    root = write_cad120(tmp_path / "raw")
    prepare = ["prepare", "cad120", "--out", tmp_path / "data", "--root", root, "--fold", "Subject1", "--val", "0.5"]
    assert run_cli(prepare, capsys)[0] == 0
    boxes = ["extract", "boxes", tmp_path / "data", "--out", tmp_path / "b.h5", "--source", "dataset", "--frames", 3]
    assert run_cli([*boxes, "--top-k", "3", "--workers", "0"], capsys)[0] == 0
    features = ["extract", "features", tmp_path / "b.h5", "--out", tmp_path / "f.h5", "--backbone", "resnet18"]
    features += ["--weights", "random", "--device", "cpu", "--workers", "0", "--set", "short_side=64"]
    assert run_cli(features, capsys)[0] == 0
    run = tmp_path / "run"
    argv = ["train-teacher", tmp_path / "f.h5", "--view", "global", "--out", run, *TINY_CLI, "--batch-size", "1"]
    assert run_cli(argv, capsys)[0] == 0
    info = json.loads((run / "run.json").read_text())
    assert info["method"]["object_classes"] == ["cup", "bowl", "microwave", "plate"]  # in OBJECT_TYPES order
    code, out, _ = run_cli(["eval", run, "--attention", "0510175411"], capsys)
    metrics = json.loads((run / "eval" / "metrics_test.json").read_text())["metrics"]
    assert code == 0 and "object top-1" in out and metrics["object_top1"] in (0.0, 0.5, 1.0)  # bowl, cup: 2 slots
    assert (run / "eval" / "attention" / "0510175411.png").stat().st_size > 0
