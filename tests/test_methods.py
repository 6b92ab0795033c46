"""Training methods (hoitool.train.methods) from the CLI on the synthetic set: the seam, anticipation, CL-HOI.

The data is the synthetic set's class rules as node features (hoitool.datasets.synthetic_features:
slot 0 the person, slot 1 the object), written as a manifest (with fps and frame counts), a boxes
store (is_person) and a features store, as the extract stages would; tiny models, a few epochs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli
from test_train import request

from hoitool import runs
from hoitool.datasets.synthetic import COLOURS
from hoitool.datasets.synthetic_features import generate_split
from hoitool.errors import Interrupted, StaleArtifactError
from hoitool.manifest import Manifest, VideoEntry
from hoitool.nn.anticipation import LeadTime, observe_until, truncate_batch
from hoitool.store import StagedStore, open_store
from hoitool.train.loop import train
from hoitool.train.methods import Method, get_method, list_methods, register_method

FRAMES, FPS = 15, 5.0
TINY_LIB = {"train__epochs": 2, "train__batch_size": 8, "optim__lr": 0.01}
TINY = ["--epochs", "2", "--batch-size", "8", "--workers", "0", "--device", "cpu", "--set", "model.hidden=16"]


def _turns(frame_pairs: np.ndarray) -> list[dict]:
    """The manifest's ``extra.turns`` (as ``prepare synthetic`` writes them) from the frames' (shirt, object) colours."""
    starts = [0, *(np.flatnonzero(np.any(np.diff(frame_pairs, axis=0) != 0, axis=1)) + 1)]
    return [
        {
            "person_colour": COLOURS[frame_pairs[start, 0]],
            "object_colour": COLOURS[frame_pairs[start, 1]],
            "object_kind": "object",
        }
        for start in starts
    ]


def _write_set(root):
    """Manifest + boxes store + features store of the synthetic set (2 scenes per class and split)."""
    splits = {split: generate_split(split, 2, seed=0, frames=FRAMES, dim=16) for split in ("train", "val", "test")}
    classes = list(splits["train"].classes)
    videos, arrays = [], {}
    for split, data in splits.items():
        for row in range(len(data)):
            video = f"{split}{row:02d}"
            labels, extra = [int(data.labels[row])], {"turns": _turns(data.frame_pairs[row])}
            videos.append(VideoEntry(video, f"{video}.mp4", labels, split, fps=FPS, num_frames=FRAMES, extra=extra))
            arrays[video] = {name: getattr(data, name)[row] for name in ("nodes", "valid", "boxes", "frame_size")}
    Manifest(dataset="synthetic", classes=classes, multilabel=False, videos=videos).save(root / "manifest.json")
    frames = np.arange(FRAMES)[None]
    boxes = StagedStore(root / "boxes.h5", "boxes", {"config": {}, "upstream": None})
    features = StagedStore(root / "features.h5", "features", {"config": {}, "upstream": None})
    for video, a in arrays.items():
        person = np.zeros(a["valid"].shape, bool)
        person[:, 0] = True
        common = {
            "frame_indices": frames,
            "frame_valid": np.ones((1, FRAMES), bool),
            "frame_size": np.array([128, 128]),
        }
        boxes.save(
            video,
            {
                **common,
                "boxes": a["boxes"][None],
                "scores": np.ones((1, *a["valid"].shape), np.float32),
                "labels": np.where(person, 0, 1)[None],
                "is_person": person[None],
                "valid": a["valid"][None],
            },
        )
        features.save(
            video,
            {
                **common,
                "nodes": a["nodes"][None].astype(np.float16),
                "valid": a["valid"][None],
                "boxes": a["boxes"][None],
            },
        )
    manifest = {"manifest": str((root / "manifest.json").resolve())}
    shape = {"num_frames": FRAMES, "max_boxes": 2}
    boxes.finalize(manifest, shape)
    upstream = {"boxes": open_store(root / "boxes.h5").fingerprint, "boxes_path": str((root / "boxes.h5").resolve())}
    dim = next(iter(arrays.values()))["nodes"].shape[-1]
    features.finalize(dict(manifest, upstream=upstream), {"views": 1, "dim": dim, **shape})
    return classes


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    classes = _write_set(root)
    return root, classes


@pytest.fixture(scope="module")
def teacher(synthetic):
    """A global-context teacher that writes its node embeddings (``train-teacher --save-embeddings``)."""
    root, _ = synthetic
    out = root / "teacher"
    train(request(root / "features.h5", out, view="global", train__embeddings=True, **TINY_LIB))
    return out


def test_registry_lists_the_methods_and_refuses_unknown_or_taken_names():
    assert {"glidn", "anticipation", "cl_hoi"} <= set(list_methods())
    assert get_method("glidn") is Method
    with pytest.raises(ValueError, match="already registered"):
        register_method("anticipation")(type("Again", (Method,), {}))
    with pytest.raises(Exception, match="unknown training method 'nope'"):
        get_method("nope")


def test_truncate_batch_equals_observe_until_view_by_view():
    rng = np.random.default_rng(0)
    views = []
    for length in (6, 4):
        frame_indices = np.sort(rng.choice(40, size=6, replace=False))
        frame_valid = np.arange(6) < length
        views.append(
            {
                "frame_indices": np.where(frame_valid, frame_indices, -1),
                "frame_valid": frame_valid,
                "valid": rng.random((6, 3)) > 0.2,
                "nodes": rng.normal(size=(6, 3, 5)).astype(np.float32),
                "boxes": rng.uniform(0, 9, size=(6, 3, 4)).astype(np.float32),
            }
        )
    for view in views:
        view["valid"] &= view["frame_valid"][:, None]
    batch = {
        name: torch.from_numpy(np.stack([v[name] for v in views]))
        for name in ("frame_indices", "valid", "nodes", "boxes")
    }
    end, tau = torch.tensor([39.0, float("nan")]), torch.tensor([12.0, 5.0])
    cut = truncate_batch(batch, end, tau)
    last_sampled = views[1]["frame_indices"][views[1]["valid"].any(-1)].max()
    for row, last_frame in enumerate([39.0 - 12.0, last_sampled - 5.0]):
        expected = observe_until(views[row], last_frame)
        for name in ("valid", "nodes", "boxes"):
            assert np.array_equal(cut[name][row].numpy(), expected[name]), name
    assert LeadTime(fraction=0.4).frames(FPS, FRAMES) == pytest.approx(6.0)


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_anticipation_from_the_cli_with_unlabelled_videos_and_eval_at_lead_times(synthetic, teacher, tmp_path, capsys):
    root, _ = synthetic
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("# seen without labels\ntrain00\ntrain04\n")
    out = tmp_path / "anticipation"
    code, _, err = run_cli(
        [
            "distill",
            root / "features.h5",
            "--teacher",
            teacher,
            "--view",
            "global",
            "--method",
            "anticipation",
            "--lead-time",
            "40%",
            "--unlabelled",
            unlabelled,
            "--out",
            out,
            *TINY,
        ],
        capsys,
    )
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["method"]["name"] == "anticipation" and info["method"]["lead_time"] == "40%"
    assert info["label"].startswith("anticipation τ=40%")
    for record in _metrics(out):
        assert record["loss_distill"] > 0 and record["loss_soft"] > 0 and record["loss_ce"] > 0
        assert record["loss_total"] == pytest.approx(record["loss_ce"] + record["loss_soft"] + record["loss_distill"])
    code, stdout, err = run_cli(["eval", out, "--lead-time", "40%", "--lead-time", "0%"], capsys)
    assert code == 0, err
    lead = json.loads((out / "eval" / "lead_times_test.json").read_text())["lead_times"]
    metrics = json.loads((out / "eval" / "metrics_test.json").read_text())["metrics"]
    # the run's outputs were made from the same truncated input as eval at the trained lead time
    assert lead["40%"]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert set(lead) == {"40%", "0%"} and "40%" in stdout
    # the report shows the method's row beside GLIDN's
    code, _, err = run_cli(["report", teacher, out, "--out", tmp_path / "report"], capsys)
    assert code == 0, err
    table = (tmp_path / "report" / "report.md").read_text()
    assert "| global-context |" in table and "| anticipation τ=40% L_d (global-teacher → global) |" in table


def test_anticipation_refuses_stale_teacher_embeddings_and_a_teacher_without_them(synthetic, teacher, tmp_path, capsys):
    root, _ = synthetic
    args = ["distill", root / "features.h5", "--view", "global", "--method", "anticipation", "--lead-time", "1s", *TINY]
    copy = tmp_path / "teacher"
    import shutil

    shutil.copytree(teacher, copy)
    data = dict(np.load(copy / "embeddings.npz"))
    data["embeddings"] = data["embeddings"] + np.float16(1)
    with open(copy / "embeddings.npz", "wb") as handle:
        np.savez(handle, **data)
    code, _, err = run_cli([*args, "--teacher", copy, "--out", tmp_path / "stale"], capsys)
    assert code == 1 and "stale teacher embeddings" in err and "changed since it was written" in err
    assert not (tmp_path / "stale").exists()  # refused before anything was written
    (copy / "embeddings.npz").unlink()
    code, _, err = run_cli([*args, "--teacher", copy, "--out", tmp_path / "none"], capsys)
    assert code == 2 and "--save-embeddings" in err
    code, _, err = run_cli(
        [
            "distill",
            root / "features.h5",
            "--view",
            "global",
            "--teacher",
            teacher,
            "--lead-time",
            "1s",
            "--out",
            tmp_path / "x",
            *TINY,
        ],
        capsys,
    )
    assert code == 2 and "setting of --method anticipation" in err


def test_text_commands_write_a_simulated_teacher_and_fill_triplets_from_captions(synthetic, tmp_path, capsys):
    root, classes = synthetic
    code, _, err = run_cli(["text", "simulate", root / "manifest.json", "--out", tmp_path / "vlm.jsonl"], capsys)
    assert code == 0, err
    lines = [json.loads(line) for line in (tmp_path / "vlm.jsonl").read_text().splitlines()]
    assert len(lines) == 54 and lines[0]["captions"][0].startswith("A person in a ")
    phrases = {name.replace("_", " ") for name in classes}
    assert all(len(line["triplets"]) == 1 and line["triplets"][0][0] in phrases for line in lines)
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"video": "train00", "caption": "A man is swinging a baseball bat."}) + "\n")
    code, _, err = run_cli(["text", "triplets", captions, "--out", tmp_path / "triplets.jsonl"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "triplets.jsonl").read_text())["triplets"] == [["swing", "baseball bat"]]
    code, _, err = run_cli(["text", "triplets", captions, "--out", captions], capsys)
    assert code == 2 and "is the input file" in err


def test_cl_hoi_label_free_from_the_cli_is_scored_against_the_true_labels(synthetic, teacher, tmp_path, capsys):
    root, _ = synthetic
    vlm = tmp_path / "vlm.jsonl"
    assert run_cli(["text", "simulate", root / "manifest.json", "--out", vlm, "--error-rate", "0.2"], capsys)[0] == 0
    out = tmp_path / "cl_hoi"
    args = ["--method", "cl_hoi", "--vlm-import", vlm, "--text-encoder", "tiny:16", "--label-free", *TINY]
    code, _, err = run_cli(["train-teacher", root / "features.h5", "--view", "global", "--out", out, *args], capsys)
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["method"]["name"] == "cl_hoi" and info["method"]["label_free"] is True
    assert info["label"] == "cl_hoi label-free (global-context)"
    for record in _metrics(out):
        assert {"loss_ce", "loss_context", "loss_i2t", "loss_t2i", "loss_sr"} <= set(record)
        assert record["loss_context"] > 0 and record["loss_sr"] > 0
    assert (out / "text_embeddings.npz").is_file() and (out / "text_embeddings.json").is_file()
    assert "teacher labels" in err and "as the manifest does" in err
    code, _, err = run_cli(["eval", out], capsys)
    assert code == 0, err
    record = json.loads((out / "eval" / "metrics_test.json").read_text())
    code, _, err = run_cli(["eval", out, "--lead-time", "10%"], capsys)
    assert code == 2 and "not a cl_hoi run" in err
    assert record["counts"]["videos"] == len(Manifest.load(root / "manifest.json").split("test"))
    # a student of a GLIDN teacher adds the KD term beside the contrastive ones
    student = tmp_path / "student"
    code, _, err = run_cli(
        ["distill", root / "features.h5", "--view", "local", "--teacher", teacher, "--out", student, *args], capsys
    )
    assert code == 0, err
    assert _metrics(student)[-1]["loss_distill"] > 0


def test_report_names_a_methods_run_even_under_a_label_of_its_own():
    from hoitool.eval.report import run_label

    assert run_label({"label": "mine", "method": {"name": "cl_hoi"}}) == "mine [cl_hoi]"
    assert run_label({"label": "cl_hoi label-free (global-context)", "method": {"name": "cl_hoi"}}).count("cl_hoi") == 1
    assert run_label({"label": "global-context", "method": {"name": "glidn"}}) == "global-context"
    assert run_label({"kind": "teacher", "view": "local"}) == "local"  # runs from before methods: GLIDN's


def test_label_at_t_reads_action_intervals_and_class_named_segments_only():
    from hoitool.train.methods.anticipation import label_at_end

    classes = ["a", "b", "c"]
    charades = VideoEntry("v", "v.mp4", [0, 1, 2], "train", fps=10.0, num_frames=101)  # t = 10 s
    charades.extra = {"actions": [[0, 0.0, 4.0], [1, 8.0, 10.0], [2, 9.5, 30.0]]}
    assert label_at_end(charades, classes, multilabel=True) == [1, 2]
    charades.extra = {"actions": [[0, 0.0, 4.0]]}
    assert label_at_end(charades, classes, multilabel=True) == []  # nothing happens at t
    named = VideoEntry("w", "w.mp4", [0], "train", fps=10.0, num_frames=50)
    named.extra = {"segments": [[0, 20, "a"], [21, 49, "c"]]}
    assert label_at_end(named, classes, multilabel=False) == [2]
    named.extra = {"segments": [[0, 49, "reaching"]]}  # CAD-120: sub-activities, not the classes
    assert label_at_end(named, classes, multilabel=False) is None
    assert label_at_end(VideoEntry("x", "x.mp4", [1], "train"), classes, multilabel=False) is None


def _stop_after_first_epoch(epoch, record):
    if epoch == 1:
        raise Interrupted("simulated SIGTERM")


def test_cl_hoi_resume_refuses_a_changed_vlm_import_or_text_embeddings_unless_forced(synthetic, tmp_path, capsys):
    root, _ = synthetic
    vlm = tmp_path / "vlm.jsonl"
    assert run_cli(["text", "simulate", root / "manifest.json", "--out", vlm], capsys)[0] == 0
    out = tmp_path / "run"
    settings = dict(TINY_LIB, method__name="cl_hoi", cl_hoi__vlm_import=str(vlm), cl_hoi__text_encoder="tiny:16")
    with pytest.raises(Interrupted):
        train(request(root / "features.h5", out, **settings), on_epoch_end=_stop_after_first_epoch)
    recorded = torch.load(runs.last_checkpoint(out), weights_only=False)["method_upstream"]
    assert set(recorded) == {
        f"VLM import {vlm}",
        "text encoder tiny:16",
        f"text embeddings {out / 'text_embeddings.npz'}",
    }
    assert json.loads((out / "run.json").read_text())["method"]["fingerprints"][f"VLM import {vlm}"]
    original = vlm.read_text()
    vlm.write_text(original.replace("A person", "Someone", 1))  # the teacher's text changed since the start
    with pytest.raises(StaleArtifactError, match=f"its VLM import {vlm} changed since it was made"):
        train(request(root / "features.h5", out, resume=True, **settings))
    vlm.write_text(original)
    embeddings = out / "text_embeddings.npz"
    embeddings.write_bytes(embeddings.read_bytes() + b"\0")  # the cache's own bytes changed
    with pytest.raises(StaleArtifactError, match=f"its text embeddings {embeddings} changed since it was made"):
        train(request(root / "features.h5", out, resume=True, **settings))
    result = train(request(root / "features.h5", out, resume=True, force=True, **settings))  # rebuilt, continued
    assert result.trained_epochs == 1


def test_cl_hoi_label_free_refuses_class_names_of_the_same_text_before_any_work(synthetic, tmp_path, capsys):
    root, classes = synthetic
    manifest = Manifest.load(root / "manifest.json")
    manifest.classes = [classes[0], classes[0].upper(), *classes[2:]]
    manifest.save(tmp_path / "manifest.json")
    vlm = tmp_path / "vlm.jsonl"
    assert run_cli(["text", "simulate", root / "manifest.json", "--out", vlm], capsys)[0] == 0
    out = tmp_path / "run"
    args = ["--method", "cl_hoi", "--vlm-import", vlm, "--text-encoder", "tiny:16", "--label-free", *TINY]
    args += ["--set", f"data.manifest={tmp_path / 'manifest.json'}"]
    code, _, err = run_cli(["train-teacher", root / "features.h5", "--view", "global", "--out", out, *args], capsys)
    assert code == 2 and f"the classes {classes[0]!r} and {classes[0].upper()!r} both read as the text" in err
    assert not out.exists()
