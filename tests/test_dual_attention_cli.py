"""Dual attention wired into the stages: frame maps in the features store, the data path, train/eval/report, PNGs."""

from __future__ import annotations

import numpy as np
import torch

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

    from hoitool.eval.runs import write_outputs

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
    from hoitool.eval.runs import load_run

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
