"""``hoitool eval`` on tiny fake run directories and on the real Charades submission fixture."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli
from sklearn import metrics as skm

from hoitool.eval.charades import charades_map, read_charades_gt, read_submission
from hoitool.runs import OUTPUTS_JSON, load_run, write_outputs

CHARADES = Path(__file__).resolve().parents[2] / "shared" / "data" / "charades"


def make_run(
    path: Path,
    multilabel: bool,
    seed: int = 0,
    classes: int = 6,
    videos: int = 16,
    views: int = 3,
    shift: float = 0.0,
    **info,
):
    """A run directory as the trainers write it; targets depend on ``videos`` only, logits on ``seed`` too."""
    path.mkdir(parents=True, exist_ok=True)
    target_rng = np.random.default_rng(1000 + videos)
    if multilabel:
        per_video = (target_rng.random((videos, classes)) < 0.35).astype(np.float32)
        per_video[np.arange(videos), np.arange(videos) % classes] = 1  # every class has positives
        per_video[0] = 0  # one test video without labels
    else:
        per_video = np.eye(classes, dtype=np.float32)[np.arange(videos) % classes]
    rng = np.random.default_rng(seed)
    ids = np.repeat([f"vid{i:03d}" for i in range(videos)], views)
    split = np.where(np.repeat(np.arange(videos), views) % 4 == 3, "val", "test")
    targets = np.repeat(per_video, views, axis=0)
    logits = (2 * targets + rng.normal(size=targets.shape) + shift).astype(np.float32)
    record = {
        "kind": "teacher",
        "view": "global",
        "teacher_view": None,
        "seed": seed,
        "multilabel": multilabel,
        "classes": [f"action {c}" for c in range(classes)],
        "dataset": "toy",
        "features": "f.h5",
        "distill": None,
    }
    record.update(info)
    (path / "run.json").write_text(json.dumps(record))
    provenance = {"checkpoint": "best.pt", "seed": seed}
    write_outputs(path, ids, np.tile(np.arange(views), videos), split, logits, targets, provenance)
    return path


def invoke(capsys, *argv):
    return run_cli([str(arg) for arg in argv], capsys)


def fused_by_hand(run_dir: Path, split: str, rule: str):
    """Independent fusion: probabilities per row, then max/mean per video, videos sorted."""
    run = load_run(run_dir)
    keep = run.split == split
    logits = run.logits[keep].astype(np.float64)
    if run.multilabel:
        probs = 1 / (1 + np.exp(-logits))
    else:
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ids = sorted(set(run.video_ids[keep].tolist()))
    pick = {v: np.flatnonzero(run.video_ids[keep] == v) for v in ids}
    reduce = np.max if rule == "max" else np.mean
    scores = np.array([reduce(probs[pick[v]], axis=0) for v in ids])
    targets = np.array([run.targets[keep][pick[v][0]] for v in ids])
    return ids, scores, targets


def test_single_label_eval_writes_metrics_tables_and_plot(tmp_path, capsys):
    run = make_run(tmp_path / "run", multilabel=False)
    code, out, err = invoke(capsys, "eval", run)
    assert code == 0, err
    metrics = json.loads((run / "eval" / "metrics_test.json").read_text())
    ids, scores, targets = fused_by_hand(run, "test", "max")
    labels, predicted = targets.argmax(1), scores.argmax(1)
    assert metrics["metrics"]["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted), abs=1e-12)
    top5 = skm.top_k_accuracy_score(labels, scores, k=5, labels=range(6))
    assert metrics["metrics"]["top5_accuracy"] == pytest.approx(top5, abs=1e-12)
    assert metrics["metrics"]["macro_f1"] == pytest.approx(skm.f1_score(labels, predicted, average="macro"), abs=1e-12)
    assert metrics["main_metric"] == "accuracy" and metrics["task"] == "single-label"
    assert metrics["counts"] == {"rows": 36, "videos": 12, "classes": 6, "views_per_video": {"min": 3, "max": 3}}
    assert metrics["provenance"]["checkpoint"] == "best.pt" and metrics["run_info"]["seed"] == 0
    assert metrics["fusion"] == {"views": "max", "runs": None, "scores": "softmax"}
    per_class = (run / "eval" / "per_class_test.csv").read_text().splitlines()
    assert per_class[0] == "class_index,class,precision,recall,f1,support" and len(per_class) == 7
    assert sum(int(line.rsplit(",", 1)[1]) for line in per_class[1:]) == 12
    assert (run / "eval" / "confusion_test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "eval" / "confusion_test.pdf").read_bytes()[:5] == b"%PDF-"
    title = f"run [test] accuracy {skm.accuracy_score(labels, predicted):.3f}"
    assert f"<!-- {title} -->" in (run / "eval" / "confusion_test.svg").read_text()  # the SVG's text, as drawn
    assert {"confusion_pdf", "confusion_svg"} <= set(metrics["files"])
    confusion = np.loadtxt(run / "eval" / "confusion_test.csv", delimiter=",", skiprows=1, usecols=range(1, 7))
    assert (confusion == skm.confusion_matrix(labels, predicted, labels=range(6))).all()
    assert "accuracy (top-1)" in out


def test_multi_label_eval_scores_both_maps_and_its_submission_rescores_identically(tmp_path, capsys):
    run = make_run(tmp_path / "run", multilabel=True)
    code, _, err = invoke(capsys, "eval", run, "--fusion", "mean", "--map", "sklearn")
    assert code == 0, err
    metrics = json.loads((run / "eval" / "metrics_test.json").read_text())
    ids, scores, targets = fused_by_hand(run, "test", "mean")
    official = charades_map(scores, targets)
    assert metrics["metrics"]["map_official"] == pytest.approx(official[0], abs=1e-12)
    assert metrics["metrics"]["wap_official"] == pytest.approx(official[1], abs=1e-12)
    has_positives = targets.any(axis=0)
    sk = skm.average_precision_score(targets[:, has_positives], scores[:, has_positives], average="macro")
    assert metrics["metrics"]["map_sklearn"] == pytest.approx(sk, abs=1e-12)
    assert metrics["main_metric"] == "map_sklearn" and metrics["counts"]["videos_without_labels"] == 1
    title = f"run [test] official mAP {official[0]:.3f}"
    assert f"<!-- {title} -->" in (run / "eval" / "per_class_ap_test.svg").read_text()
    assert (run / "eval" / "per_class_ap_test.pdf").read_bytes()[:5] == b"%PDF-"
    submission = run / "eval" / "submission_test.txt"
    sub_ids, sub_scores = read_submission(submission, num_classes=6)
    assert sub_ids == ids and np.allclose(sub_scores, scores, rtol=0, atol=1e-15)
    gt = tmp_path / "gt.csv"
    lines = ["id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"]
    for video, row in zip(ids, targets, strict=False):
        actions = ";".join(f"c{c:03d} 0.0 1.0" for c in np.flatnonzero(row))
        lines.append(f"{video},S,Room,5,5,Yes,script,cup,desc,{actions},3.0")
    gt.write_text("\n".join(lines) + "\n")
    code, out, err = invoke(
        capsys, "eval", "--submission", submission, "--gt", gt, "--classes", 6, "--out", tmp_path / "sub"
    )
    assert code == 0, err
    assert f"mAP {metrics['metrics']['map_official']!r}" in out.splitlines()
    assert f"wAP {metrics['metrics']['wap_official']!r}" in out.splitlines()
    per_class = json.loads((tmp_path / "sub" / "submission_test_map.json").read_text())
    assert len(per_class["ap_per_class"]) == 6 and (tmp_path / "sub" / "submission_test_ap.csv").is_file()


def test_split_selects_rows_and_an_absent_split_is_a_usage_error(tmp_path, capsys):
    run = make_run(tmp_path / "run", multilabel=False)
    code, _, err = invoke(capsys, "eval", run, "--split", "val", "--out", tmp_path / "out")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "metrics_val.json").read_text())["counts"]["videos"] == 4
    code, _, err = invoke(capsys, "eval", run, "--split", "train")
    assert code == 2 and "no outputs for split 'train' (present: test, val)" in err


def test_fuse_runs_fuses_each_run_then_the_runs(tmp_path, capsys):
    first = make_run(tmp_path / "a", multilabel=False, seed=1)
    second = make_run(tmp_path / "b", multilabel=False, seed=2, shift=0.5)
    code, _, err = invoke(capsys, "eval", first, "--fuse-runs", second, "--fusion", "mean")
    assert code == 0, err
    files = sorted(p.name for p in (first / "eval").glob("metrics_test_fused-mean-*.json"))
    assert len(files) == 1 and not (first / "eval" / "metrics_test.json").exists()
    metrics = json.loads((first / "eval" / files[0]).read_text())
    _, scores_a, targets = fused_by_hand(first, "test", "mean")
    _, scores_b, _ = fused_by_hand(second, "test", "mean")
    expected = skm.accuracy_score(targets.argmax(1), ((scores_a + scores_b) / 2).argmax(1))
    assert metrics["metrics"]["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert metrics["name"] == "fused(mean): a + b" and metrics["fusion"]["runs"] == "mean"
    assert metrics["fused_runs"][0]["run"] == str(second.resolve())
    other = make_run(tmp_path / "c", multilabel=False, videos=20)
    code, _, err = invoke(capsys, "eval", first, "--fuse-runs", other)
    assert code == 2 and "covers different videos" in err


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    run = make_run(tmp_path / "run", multilabel=False)
    (tmp_path / "empty").mkdir()
    cases = [
        (["eval", tmp_path / "empty"], "run.json: missing"),
        (["eval", run, "--submission", "s.txt", "--gt", "g.csv"], "not both"),
        (["eval", "--submission", "s.txt"], "--submission needs --gt"),
        (["eval", run, "--gt", tmp_path / "none.csv"], "single-label run"),
        (["eval", run, "--fusion", "sum"], "--fusion 'sum'"),
        (["eval"], "give a RUN directory"),
        (["eval", run, "--classes", 10], "--classes goes with --submission"),
        (["eval", "--submission", tmp_path / "x.txt", "--gt", tmp_path / "x.csv"], "x.csv: ground-truth CSV not found"),
    ]
    for argv, message in cases:
        code, _, err = invoke(capsys, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_outputs_npz_not_matching_outputs_json_is_refused(tmp_path, capsys):
    run = make_run(tmp_path / "run", multilabel=False)
    provenance = json.loads((run / OUTPUTS_JSON).read_text())
    provenance["outputs_sha256"] = "0" * 64
    (run / OUTPUTS_JSON).write_text(json.dumps(provenance))
    code, _, err = invoke(capsys, "eval", run)
    assert code == 1 and "does not match outputs.json" in err


def test_write_outputs_refuses_inconsistent_arrays(tmp_path):
    from hoitool.errors import UsageError

    with pytest.raises(UsageError, match="video a view 0 appears more than once"):
        write_outputs(tmp_path, ["a", "a"], [0, 0], ["test", "test"], np.zeros((2, 2)), np.eye(2), {})
    with pytest.raises(UsageError, match="logits contain NaN"):
        write_outputs(tmp_path, ["a"], [0], ["test"], np.full((1, 2), np.nan), np.eye(2)[:1], {})
    assert not (tmp_path / "outputs.npz").exists()


def test_real_submission_prints_the_official_numbers(tmp_path):
    if not (CHARADES / "eval_results.txt").is_file():
        pytest.skip(f"Charades fixture not found at {CHARADES} (../shared/data beside the checkout)")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hoitool",
            "eval",
            "--submission",
            str(CHARADES / "eval_results.txt"),
            "--gt",
            str(CHARADES / "Charades_v1_test.csv"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["mAP 0.0928263175514704", "wAP 0.14064232824836287"]
    written = json.loads((tmp_path / "eval_results_map.json").read_text())
    reference = json.loads((CHARADES / "classify_results.json").read_text())
    np.testing.assert_allclose(written["ap_per_class"], reference["ap_all"], rtol=0, atol=1e-12)
    assert len((tmp_path / "eval_results_ap.csv").read_text().splitlines()) == 158


def _official_by_hand(gt_ids, gt_labels, scored: dict) -> float:
    """Charades_v1_classify.m transcribed loop by loop: -inf rows, label-less ids never filled, sort(-conf)."""
    n, c = gt_labels.shape
    test = np.full((n, c), -np.inf)
    for i, video in enumerate(gt_ids):
        if gt_labels[i].any() and video in scored:
            test[i] = scored[video]
    aps = []
    for k in range(c):
        conf = -test[:, k]
        order = sorted(range(n), key=lambda i: (np.isnan(conf[i]), 0.0 if np.isnan(conf[i]) else conf[i]))  # stable
        tp = fp = 0
        total = 0.0
        for i in order:
            if gt_labels[i, k]:
                tp += 1
                total += tp / (tp + fp)
            else:
                fp += 1
        aps.append(total / gt_labels[:, k].sum())
    return float(np.mean(aps))


def _charades_run(path: Path, gt, keep: np.ndarray, rng) -> Path:
    """A run whose test outputs cover the ground-truth videos in ``keep`` (2 views each), as a trainer writes it."""
    path.mkdir(parents=True, exist_ok=True)
    ids = np.repeat(np.asarray(gt.ids)[keep], 2)
    targets = np.repeat(gt.labels[keep].astype(np.float32), 2, axis=0)
    logits = np.round(rng.normal(size=targets.shape) + 1.5 * targets, 1).astype(np.float32)  # rounding makes ties
    info = {
        "kind": "teacher",
        "view": "global",
        "multilabel": True,
        "dataset": "charades",
        "seed": 0,
        "classes": [f"c{k:03d}" for k in range(gt.labels.shape[1])],
        "features": str(path / "absent.h5"),
    }
    (path / "run.json").write_text(json.dumps(info))
    write_outputs(path, ids, np.tile([0, 1], int(keep.sum())), ["test"] * len(ids), logits, targets, {})
    return path


def test_charades_run_is_ranked_against_the_full_test_list(tmp_path, capsys):
    """5% of the test videos without outputs: eval RUN equals the submission path and the script by hand."""
    if not (CHARADES / "Charades_v1_test.csv").is_file():
        pytest.skip(f"Charades fixture not found at {CHARADES} (../shared/data beside the checkout)")
    gt_csv = CHARADES / "Charades_v1_test.csv"
    gt = read_charades_gt(gt_csv)
    rng = np.random.default_rng(0)
    keep = rng.random(len(gt.ids)) >= 0.05
    run = _charades_run(tmp_path / "run", gt, keep, rng)
    code, out, err = invoke(capsys, "eval", run, "--gt", gt_csv)
    assert code == 0, err
    record = json.loads((run / "eval" / "metrics_test.json").read_text())
    truth = record["counts"]["ground_truth"]
    missing = int((~keep & gt.labels.any(axis=1)).sum())
    assert missing > 50 and truth["missing"] == missing and truth["scored"] == int((keep & gt.labels.any(axis=1)).sum())
    assert f"{missing} test video(s) with labels had no scores" in err
    code, sub_out, err = invoke(capsys, "eval", "--submission", run / "eval" / "submission_test.txt", "--gt", gt_csv)
    assert code == 0, err
    assert sub_out.splitlines()[0] == f"mAP {record['metrics']['map_official']!r}"
    assert sub_out.splitlines()[1] == f"wAP {record['metrics']['wap_official']!r}"
    ids, scores = read_submission(run / "eval" / "submission_test.txt")
    by_hand = _official_by_hand(gt.ids, gt.labels, dict(zip(ids, scores, strict=False)))
    assert abs(record["metrics"]["map_official"] - by_hand) <= 1e-12
    # Dropping the missing videos (the old behaviour) gives another number: the official rule matters here.
    own_only, _, _ = charades_map(scores, gt.labels[keep])
    assert abs(own_only - by_hand) > 1e-4
    # So does the full list with ties broken in video-id order rather than ground-truth file order.
    row_of = {video: row for row, video in enumerate(gt.ids)}
    full = np.full(gt.labels.shape, -np.inf)
    full[[row_of[video] for video in ids]] = scores
    by_id = np.argsort(gt.ids, kind="stable")
    id_ties, _, _ = charades_map(full[by_id], gt.labels[by_id])
    assert abs(id_ties - by_hand) > 1e-6  # far above rounding (1e-16)


def test_charades_run_without_a_known_ground_truth_says_so(tmp_path, capsys):
    if not (CHARADES / "Charades_v1_test.csv").is_file():
        pytest.skip(f"Charades fixture not found at {CHARADES} (../shared/data beside the checkout)")
    gt = read_charades_gt(CHARADES / "Charades_v1_test.csv")
    keep = np.zeros(len(gt.ids), bool)
    keep[:40] = True
    run = _charades_run(tmp_path / "run", gt, keep, np.random.default_rng(1))
    code, _, err = invoke(capsys, "eval", run)
    assert code == 0, err
    assert "official mAP over the run's own 40 videos only" in err and "--gt Charades_v1_test.csv" in err
    record = json.loads((run / "eval" / "metrics_test.json").read_text())
    assert record["counts"]["ground_truth"]["path"] is None
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("id,subject,actions,length\n" + f"{gt.ids[1]},s,c001 0 1,3\n")
    code, _, err = invoke(capsys, "eval", run, "--gt", wrong)
    assert code == 2 and f"video {gt.ids[1]}: the run's labels differ" in err
