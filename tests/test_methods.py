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
from hoitool.io.digest import file_sha256
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
    ends = [*starts[1:], len(frame_pairs)]
    return [
        {
            "frames": [int(start), int(end)],  # [start, end) as prepare synthetic writes them
            "person_colour": COLOURS[frame_pairs[start, 0]],
            "object_colour": COLOURS[frame_pairs[start, 1]],
            "object_kind": "object",
        }
        for start, end in zip(starts, ends, strict=True)
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


def test_a_setting_of_another_method_is_refused_not_ignored(synthetic, tmp_path, capsys):
    """Any key of another method's section that differs from its default (not only the required ones) is refused
    before any file; the method's own settings and the defaults pass."""
    from hoitool.settings.training import DistillStageSettings
    from hoitool.train.methods import foreign_settings

    config = DistillStageSettings().model_dump()
    assert foreign_settings(config, "glidn") == []
    config["anticipation"]["at"] = "events"
    config["dual_attention"]["hidden"] = 7
    assert foreign_settings(config, "glidn") == [
        ("anticipation.at", "anticipation"),
        ("dual_attention.hidden", "dual_attention"),
    ]
    assert foreign_settings(config, "anticipation") == [("dual_attention.hidden", "dual_attention")]
    root, _ = synthetic
    code, _, err = run_cli(
        ["distill", root / "features.h5", "--dml", "--view", "local", "--out", tmp_path / "dml",
         "--anticipate-at", "events", "--device", "cpu"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "anticipation.at is a setting of --method anticipation, but this run's method is glidn" in err
    assert not (tmp_path / "dml").exists()


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


def _hand_event_accuracy(root, run_dir, fraction: float) -> tuple[float, int, int]:
    """Accuracy of ``run_dir``'s best.pt over every test event, counted by hand: t = each turn's last frame
    (from the manifest's turns), the view cut with observe_until at t - fraction * frames, one forward per event.
    Returns (accuracy, events, events whose cut leaves no frame)."""
    from hoitool.nn.models import build_model

    best = torch.load(runs.best_checkpoint(run_dir), weights_only=False)
    model = build_model(best["model_config"], best["in_dim"], best["num_classes"])
    model.load_state_dict(best["model"])
    model.eval()
    manifest, store = Manifest.load(root / "manifest.json"), open_store(root / "features.h5")
    correct = total = empty = 0
    for video in manifest.split("test"):
        arrays = store.read(video.id, ["nodes", "valid", "boxes", "frame_indices", "frame_valid", "frame_size"])
        view = {name: value[0] if name != "frame_size" else value for name, value in arrays.items()}
        for turn in video.extra["turns"]:
            t = turn["frames"][1] - 1
            seen = observe_until(view, t - fraction * video.num_frames)
            empty += int(not seen["valid"].any())
            with torch.no_grad():
                logits = model(torch.from_numpy(seen["nodes"][None]).float(), torch.from_numpy(seen["valid"][None]))
            correct += int(int(logits.argmax()) == video.labels[0])
            total += 1
    return correct / total, total, empty


def test_anticipation_at_events_from_the_cli_scores_every_event_as_a_hand_count(synthetic, teacher, tmp_path, capsys):
    root, _ = synthetic
    out = tmp_path / "events"
    args = ["distill", root / "features.h5", "--teacher", teacher, "--view", "global", "--method", "anticipation"]
    code, _, err = run_cli([*args, "--lead-time", "40%", "--anticipate-at", "events", "--out", out, *TINY], capsys)
    assert code == 0, err
    info = json.loads((out / "run.json").read_text())
    assert info["method"]["at"] == "events" and "at events" in info["label"]
    assert info["method"]["teacher_checkpoint"]["sha256"] == file_sha256(runs.best_checkpoint(teacher))
    for record in _metrics(out):
        assert record["loss_distill"] > 0 and record["loss_ce"] > 0
    outputs = np.load(out / "outputs.npz", allow_pickle=False)
    test_ids = outputs["video_ids"][outputs["split"] == "test"]
    manifest = Manifest.load(root / "manifest.json")
    expected = sorted(f"{v.id}@{t['frames'][1] - 1}" for v in manifest.split("test") for t in v.extra["turns"])
    assert sorted(test_ids.tolist()) == expected  # one row per event of every test video
    code, stdout, err = run_cli(["eval", out, "--lead-time", "40%", "--lead-time", "0%"], capsys)
    assert code == 0, err
    record = json.loads((out / "eval" / "lead_times_test.json").read_text())
    assert record["at"] == "events"
    for text, fraction in (("40%", 0.4), ("0%", 0.0)):
        accuracy, events, empty = _hand_event_accuracy(root, out, fraction)
        lead = record["lead_times"][text]
        assert lead["samples"] == events == len(expected) and lead["empty_inputs"] == empty
        assert lead["accuracy"] == pytest.approx(accuracy)
    assert record["lead_times"]["40%"]["empty_inputs"] > 0  # the first turn ends before 40% of the video
    metrics = json.loads((out / "eval" / "metrics_test.json").read_text())
    assert metrics["metrics"]["accuracy"] == pytest.approx(record["lead_times"]["40%"]["accuracy"])
    # a recognition teacher scored per event too, and --anticipate-at without --lead-time refused
    code, _, err = run_cli(
        ["eval", teacher, "--lead-time", "0%", "--anticipate-at", "events", "--out", tmp_path / "e"], capsys
    )
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "lead_times_test.json").read_text())["lead_times"]["0%"]["samples"] == events
    code, _, err = run_cli(["eval", out, "--anticipate-at", "events"], capsys)
    assert code == 2 and "--anticipate-at goes with --lead-time" in err


def test_online_teacher_sees_the_clip_cut_at_the_drawn_event(synthetic, teacher, tmp_path):
    """The frozen teacher's logits on a training batch equal a direct forward of its best.pt model on the view
    cut (observe_until) at the event the epoch drew; the student's input is the view cut at t - tau."""
    from hoitool.nn.models import build_model
    from hoitool.train.distributed import init_distributed
    from hoitool.train.loop import Training
    from hoitool.train.methods.anticipation_events import draw_events

    root, _ = synthetic
    settings = dict(TINY_LIB, method__name="anticipation", anticipation__lead_time="20%", anticipation__at="events")
    req = request(root / "features.h5", tmp_path / "run", kind="student", teacher=teacher, **settings)
    from hoitool.settings import resolved
    from hoitool.settings.training import DistillStageSettings

    req.config = resolved(DistillStageSettings, req.config)
    training = Training(req, init_distributed("cpu"))
    training.setup(None)
    assert not (tmp_path / "run").exists()  # set-up alone writes nothing
    training.sampler.set_epoch(2)
    best = torch.load(runs.best_checkpoint(teacher), weights_only=False)
    direct = build_model(best["model_config"], best["in_dim"], best["num_classes"])
    direct.load_state_dict(best["model"])
    direct.eval()
    manifest, store = Manifest.load(root / "manifest.json"), open_store(root / "features.h5")
    by_id, train_ids = manifest.by_id(), training.videos["train"].video_ids
    counts = np.array([len(by_id[v].extra["turns"]) for v in train_ids])
    drawn = draw_events(counts, req.config["train"]["seed"], 2)
    raw = next(iter(training.train_loader))
    batch = training.method.inputs(raw, "train")
    for row, position in enumerate(raw["index"].tolist()):
        video = by_id[train_ids[position]]
        t = video.extra["turns"][drawn[position]]["frames"][1] - 1
        arrays = store.read(video.id, ["nodes", "valid", "boxes", "frame_indices", "frame_valid", "frame_size"])
        view = {name: value[0] if name != "frame_size" else value for name, value in arrays.items()}
        teacher_view, student_view = observe_until(view, t), observe_until(view, t - 0.2 * video.num_frames)
        with torch.no_grad():
            expected = direct(
                torch.from_numpy(teacher_view["nodes"][None]).float(), torch.from_numpy(teacher_view["valid"][None])
            )
        assert torch.allclose(batch["teacher_logits"][row], expected[0], atol=1e-5)
        assert np.array_equal(batch["valid"][row].numpy(), student_view["valid"])
        assert not batch["teacher_logits"].requires_grad


def test_anticipation_at_events_resume_refuses_a_changed_teacher_checkpoint(synthetic, teacher, tmp_path):
    import shutil

    root, _ = synthetic
    copy = tmp_path / "teacher"
    shutil.copytree(teacher, copy)
    out = tmp_path / "run"
    settings = dict(TINY_LIB, method__name="anticipation", anticipation__lead_time="1s", anticipation__at="events")
    with pytest.raises(Interrupted):
        train(
            request(root / "features.h5", out, kind="student", teacher=copy, **settings),
            on_epoch_end=_stop_after_first_epoch,
        )
    checkpoint = runs.best_checkpoint(copy)
    recorded = torch.load(runs.last_checkpoint(out), weights_only=False)["method_upstream"]
    assert recorded == {f"teacher checkpoint {checkpoint.resolve()}": file_sha256(checkpoint)[:16]}
    state = torch.load(checkpoint, weights_only=False)
    state["model"] = {name: value + 0.01 for name, value in state["model"].items()}
    torch.save(state, checkpoint)  # the teacher's best.pt changed; its outputs did not
    with pytest.raises(StaleArtifactError, match="stale teacher outputs"):  # the outputs' own record sees it first
        train(request(root / "features.h5", out, kind="student", teacher=copy, resume=True, **settings))
    record = json.loads((copy / "outputs.json").read_text())  # outputs claiming the new best.pt (same bytes)
    record["checkpoint"]["sha256"] = file_sha256(checkpoint)
    (copy / "outputs.json").write_text(json.dumps(record))
    with pytest.raises(StaleArtifactError, match=f"teacher checkpoint {checkpoint.resolve()} changed"):
        train(request(root / "features.h5", out, kind="student", teacher=copy, resume=True, **settings))
    result = train(
        request(root / "features.h5", out, kind="student", teacher=copy, resume=True, force=True, **settings)
    )
    assert result.trained_epochs == 1


def test_anticipation_at_events_resumed_ends_bit_identical_to_an_uninterrupted_run(synthetic, teacher, tmp_path):
    root, _ = synthetic
    settings = dict(TINY_LIB, method__name="anticipation", anticipation__lead_time="20%", anticipation__at="events")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train(request(root / "features.h5", whole, kind="student", teacher=teacher, **settings))
    with pytest.raises(Interrupted):
        train(
            request(root / "features.h5", parts, kind="student", teacher=teacher, **settings),
            on_epoch_end=_stop_after_first_epoch,
        )
    train(request(root / "features.h5", parts, kind="student", teacher=teacher, resume=True, **settings))
    one, two = (torch.load(runs.last_checkpoint(run), weights_only=False) for run in (whole, parts))
    for key, value in one["members"]["main"]["model"].items():
        assert torch.equal(value, two["members"]["main"]["model"][key]), key
    assert np.array_equal(np.load(whole / "outputs.npz")["logits"], np.load(parts / "outputs.npz")["logits"])


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
