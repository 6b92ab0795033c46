"""The official Charades mAP: hand-computed cases (ties, label-less videos, -inf rows) and the real fixture."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hoitool.errors import UsageError
from hoitool.eval.charades import (
    CharadesGT,
    align_submission,
    charades_map,
    official_order,
    official_scores,
    read_charades_gt,
    read_submission,
    write_submission,
)

CHARADES = Path(__file__).resolve().parents[2] / "shared" / "data" / "charades"
HEADER = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length\n"


def test_ties_keep_file_order_and_label_less_videos_sink():
    gt = np.array([[0, 1], [1, 1], [1, 1], [0, 0]])
    scores = np.array([[0.5, 0.2], [0.5, 0.1], [0.1, 0.3], [0.9, 0.9]])
    mean_ap, weighted_ap, ap = charades_map(scores, gt)
    # Class 0: tie v0(-), v1(+) keeps file order, v2(+), label-less v3 forced to -inf: hits 0,1,1,0 -> (1/2 + 2/3)/2.
    # (Reversed ties would give 5/6; v3 left at 0.9 would give 5/12.)
    # Class 1: v2(+) v0(+) v1(+) -> 1.
    assert ap.tolist() == pytest.approx([7 / 12, 1.0], abs=1e-15)
    assert mean_ap == pytest.approx(19 / 24, abs=1e-15)
    assert weighted_ap == pytest.approx((7 / 12 * 2 + 1.0 * 3) / 5, abs=1e-15)


def test_missing_videos_score_minus_inf_and_tie_in_ground_truth_order():
    gt = CharadesGT(ids=["a", "d", "b"], labels=np.array([[1, 0], [0, 0], [0, 1]], dtype=np.uint8))
    aligned = align_submission(["zz", "d", "a"], np.array([[5.0, 5.0], [0.95, 0.99], [0.9, 0.8]]), gt)
    assert (aligned.matched, aligned.missing, aligned.ignored) == (1, 1, 1)
    assert aligned.scores.tolist() == [[0.9, 0.8], [-np.inf, -np.inf], [-np.inf, -np.inf]]
    mean_ap, weighted_ap, ap = charades_map(aligned.scores, gt.labels)
    # Class 1: a(-) at 0.8, then the -inf tie d(-), b(+) in file order -> AP 1/3.
    assert ap.tolist() == pytest.approx([1.0, 1 / 3], abs=1e-15)
    assert mean_ap == pytest.approx(2 / 3, abs=1e-15)
    assert weighted_ap == pytest.approx(2 / 3, abs=1e-15)


def test_class_without_positives_makes_official_map_nan_like_matlab():
    mean_ap, weighted_ap, ap = charades_map(np.array([[0.9, 0.1], [0.2, 0.3]]), np.array([[1, 0], [1, 0]]))
    assert ap[0] == 1.0 and math.isnan(ap[1])
    assert math.isnan(mean_ap) and math.isnan(weighted_ap)


def test_official_order_is_sort_of_minus_conf_stable_minus_inf_then_nan_last():
    # The script ranks by MATLAB's ascending sort(-conf): stable, NaN sorted to the end (after -inf).
    values = np.array([0.5, np.nan, -np.inf, 0.5, np.nan, 1.0])
    assert official_order(values).tolist() == [5, 0, 3, 2, 1, 4]
    assert official_order(np.array([0.5, -np.inf, 0.5, 1.0])).tolist() == [3, 0, 2, 1]


def test_nan_scores_rank_last_in_the_official_ap(tmp_path):
    gt = np.array([[1], [0], [1]])
    # v0 NaN(+), v1 0.2(-), v2 -inf(+): ranking v1, v2, v0 -> hits 0, 1, 1 -> AP (1/2 + 2/3) / 2.
    _, _, ap = charades_map(np.array([[np.nan], [0.2], [-np.inf]]), gt)
    assert ap.tolist() == pytest.approx([7 / 12], abs=1e-15)
    # A submission's "nan" (str2double of it is NaN in MATLAB) is ranked the same way.
    (tmp_path / "gt.csv").write_text(HEADER + "A,s,K,5,6,Yes,x,cup,y,c000 0 1,3\nB,s,K,5,6,Yes,x,cup,y,c001 0 1,3\n")
    (tmp_path / "sub.txt").write_text("A nan 0.1\nB 0.3 0.9\n")
    ids, scores = read_submission(tmp_path / "sub.txt", num_classes=2)
    _, _, ap, _ = official_scores(ids, scores, read_charades_gt(tmp_path / "gt.csv", num_classes=2))
    assert ap.tolist() == pytest.approx([0.5, 1.0], abs=1e-15)


def test_read_gt_parses_actions_and_reports_bad_lines(tmp_path):
    good = tmp_path / "gt.csv"
    good.write_text(
        HEADER
        + 'AAA,s,Kitchen,5,6,Yes,"a script, with a comma",cup,"multi\nline",c002 0.0 1.0;c000 1.5 3;c002 4 5,10\n'
        + "BBB,s,Kitchen,,,Yes,x,cup,y,,7\n"
    )
    gt = read_charades_gt(good, num_classes=3)
    assert gt.ids == ["AAA", "BBB"]
    assert gt.labels.tolist() == [[1, 0, 1], [0, 0, 0]]
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "AAA,s,K,5,6,Yes,x,cup,y,c001 0 1,10\n" + "BBB,s,K,5,6,Yes,x,cup,y,c001 0;c002 1 2,10\n")
    with pytest.raises(UsageError, match=r"bad\.csv:3: bad action 'c001 0'"):
        read_charades_gt(bad, num_classes=3)
    bad.write_text(HEADER + 'AAA,s,K,5,6,Yes,x,cup,"two\nlines",,10\n' + "BBB,s,K,5,6,Yes,x,cup,y,c009 0 1,10\n")
    with pytest.raises(UsageError, match=r"bad\.csv:4: class c009 out of range for 3 classes"):
        read_charades_gt(bad, num_classes=3)
    bad.write_text(HEADER + "AAA,s,K,5,6,Yes,x,cup,y,c009 0 1,10\n")
    with pytest.raises(UsageError, match=r"bad\.csv:2: class c009 out of range for 3 classes"):
        read_charades_gt(bad, num_classes=3)
    bad.write_text(HEADER + "AAA,s,K,5,6,Yes,x,cup,y,,10\nAAA,s,K,5,6,Yes,x,cup,y,,10\n")
    with pytest.raises(UsageError, match=r"bad\.csv:3: video AAA already listed at line 2"):
        read_charades_gt(bad, num_classes=3)


def test_read_submission_reports_bad_lines(tmp_path):
    path = tmp_path / "sub.txt"
    path.write_text("A 0.1 0.2 0.3\nB\t0.4\t0.5\t0.6\n\n")
    ids, scores = read_submission(path, num_classes=3)
    assert ids == ["A", "B"] and scores.tolist() == [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    path.write_text("A 0.1 0.2 0.3\nB 0.4 0.5\n")
    with pytest.raises(UsageError, match=r"sub\.txt:2: expected a video id and 3 scores, found 2 scores"):
        read_submission(path, num_classes=3)
    path.write_text("A 0.1 0.2 0.3\nB 0.4 x 0.6\n")
    with pytest.raises(UsageError, match=r"sub\.txt:2: score 'x' is not a number"):
        read_submission(path, num_classes=3)
    path.write_text("A 0.1 0.2 0.3\nA 0.4 0.5 0.6\n")
    with pytest.raises(UsageError, match=r"sub\.txt:2: video A already scored at line 1"):
        read_submission(path, num_classes=3)


def test_write_submission_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(3)
    scores = rng.random((4, 5))
    scores[1, 2] = -np.inf
    write_submission(tmp_path / "s.txt", ["v1", "v2", "v3", "v4"], scores)
    ids, back = read_submission(tmp_path / "s.txt", num_classes=5)
    assert ids == ["v1", "v2", "v3", "v4"] and (back == scores).all()
    with pytest.raises(UsageError, match="whitespace"):
        write_submission(tmp_path / "bad.txt", ["a b"], scores[:1])


@pytest.fixture(scope="module")
def fixture_result():
    if not (CHARADES / "eval_results.txt").is_file():
        pytest.skip(f"Charades fixture not found at {CHARADES} (../shared/data beside the checkout)")
    gt = read_charades_gt(CHARADES / "Charades_v1_test.csv")
    ids, scores = read_submission(CHARADES / "eval_results.txt")
    aligned = align_submission(ids, scores, gt)
    reference = json.loads((CHARADES / "classify_results.json").read_text())
    return gt, aligned, charades_map(aligned.scores, gt.labels), reference


def test_real_submission_gives_the_official_numbers(fixture_result):
    gt, aligned, (mean_ap, weighted_ap, ap), reference = fixture_result
    assert len(gt.ids) == 1863 and int((~gt.labels.any(axis=1)).sum()) == 49
    assert (aligned.matched, aligned.missing, aligned.ignored) == (1814, 0, 0)
    assert abs(mean_ap - 0.0928263175514704) <= 1e-12
    assert abs(weighted_ap - 0.14064232824836287) <= 1e-12
    assert abs(mean_ap - reference["map"]) <= 1e-12 and abs(weighted_ap - reference["wap"]) <= 1e-12
    np.testing.assert_allclose(ap, reference["ap_all"], rtol=0, atol=1e-12)


def test_real_submission_needs_the_stable_sort_and_the_label_less_rule(fixture_result):
    """The fixture discriminates: reversed ties or scored label-less videos move the numbers."""
    gt, aligned, (mean_ap, _, _), _ = fixture_result
    positives = gt.labels > 0
    reversed_ties = []
    for c in range(positives.shape[1]):
        order = np.argsort(aligned.scores[:, c], kind="stable")[::-1]
        hits = positives[order, c]
        reversed_ties.append((np.cumsum(hits) / np.arange(1, hits.size + 1))[hits].mean())
    assert abs(np.mean(reversed_ties) - mean_ap) > 1e-9
    ids, scores = read_submission(CHARADES / "eval_results.txt")
    all_rows = np.full(gt.labels.shape, -np.inf)
    row_of = {video: row for row, video in enumerate(gt.ids)}
    for video, values in zip(ids, scores, strict=False):
        all_rows[row_of[video]] = values
    no_forcing = [
        (np.cumsum(h) / np.arange(1, h.size + 1))[h].mean()
        for h in (positives[np.argsort(-all_rows[:, c], kind="stable"), c] for c in range(positives.shape[1]))
    ]
    assert np.mean(no_forcing) < mean_ap - 1e-3


def test_sklearn_variant_on_the_real_submission_equals_sklearn_and_differs_from_official(fixture_result):
    from sklearn.metrics import average_precision_score

    from hoitool.eval.metrics import sklearn_style_map

    gt, _, (mean_ap, _, _), _ = fixture_result
    ids, scores = read_submission(CHARADES / "eval_results.txt")
    row_of = {video: row for row, video in enumerate(gt.ids)}
    every_row = np.zeros(gt.labels.shape)
    every_row[[row_of[video] for video in ids]] = scores  # PySlowFast scores label-less videos too
    variant, _ = sklearn_style_map(every_row, gt.labels)
    assert variant == pytest.approx(average_precision_score(gt.labels, every_row, average="macro"), abs=1e-12)
    assert abs(variant - mean_ap) > 1e-3
