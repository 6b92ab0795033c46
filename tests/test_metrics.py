"""Single-label metrics, the sklearn-style mAP and view fusion, against scikit-learn and hand-computed cases."""

import numpy as np
import pytest
from sklearn import metrics as skm

from hoitool.errors import UsageError
from hoitool.eval import metrics as M
from hoitool.eval.fusion import fuse_runs, fuse_views, sigmoid, softmax


@pytest.fixture
def single_label():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(200, 9))
    labels = rng.integers(0, 9, size=200)
    scores[np.arange(100), labels[:100]] += 1.5  # better than chance, still confused
    return scores, labels


def test_accuracy_and_top5_match_sklearn(single_label):
    scores, labels = single_label
    assert M.accuracy(scores, labels) == pytest.approx(skm.accuracy_score(labels, scores.argmax(1)), abs=1e-15)
    assert M.top_k_accuracy(scores, labels, 5) == pytest.approx(
        skm.top_k_accuracy_score(labels, scores, k=5, labels=range(9)), abs=1e-15
    )


def test_confusion_prf_and_macro_f1_match_sklearn(single_label):
    scores, labels = single_label
    predictions = scores.argmax(1)
    confusion = M.confusion_matrix(labels, predictions, 9)
    assert (confusion == skm.confusion_matrix(labels, predictions, labels=range(9))).all()
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, predictions, labels=range(9), zero_division=0
    )
    prf = M.per_class_prf(confusion)
    np.testing.assert_allclose(prf["precision"], precision, atol=1e-15)
    np.testing.assert_allclose(prf["recall"], recall, atol=1e-15)
    np.testing.assert_allclose(prf["f1"], f1, atol=1e-15)
    assert (prf["support"] == support).all()
    assert M.macro_f1(confusion) == pytest.approx(skm.f1_score(labels, predictions, average="macro"), abs=1e-15)


def test_macro_f1_ignores_classes_never_seen_nor_predicted():
    # Class 2 never occurs. Class 0: P = R = 1/2, F1 = 1/2; class 1: P = R = 2/3, F1 = 2/3; macro = 7/12, not 7/18.
    confusion = M.confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], 3)
    assert M.macro_f1(confusion) == pytest.approx(7 / 12, abs=1e-15)


def test_ties_predict_the_lowest_index_in_top1_and_top_k():
    scores = np.array([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7]])
    assert M.accuracy(scores, np.array([0, 2])) == 0.5  # row 0: class 0 wins its tie; row 1: class 1 wins
    assert M.top_k_accuracy(scores, np.array([1, 0]), 1) == 0.0
    assert M.top_k_accuracy(scores, np.array([1, 0]), 2) == 0.5


def test_binary_average_precision_hand_computed_with_ties():
    # Ranking: 0.9 (+), then a tie {0.5 (+), 0.5 (-)}, then 0.1 (+).
    # Thresholds: P=1, R=1/3; P=2/3, R=2/3; P=3/4, R=1 -> AP = 1/3 + 2/9 + 1/4.
    scores = np.array([0.5, 0.9, 0.1, 0.5])
    positives = np.array([1, 1, 1, 0])
    assert M.binary_average_precision(scores, positives) == pytest.approx(1 / 3 + 2 / 9 + 1 / 4, abs=1e-15)
    assert np.isnan(M.binary_average_precision(scores, np.zeros(4)))


def test_sklearn_style_map_matches_sklearn_and_drops_classes_without_positives():
    rng = np.random.default_rng(2)
    targets = (rng.random((60, 6)) < 0.3).astype(int)
    targets[:, 4] = 0  # no positives: dropped, as PySlowFast does
    scores = np.round(rng.random((60, 6)) + targets * 0.3, 1)  # rounding makes many ties
    mean_ap, ap = M.sklearn_style_map(scores, targets)
    kept = [0, 1, 2, 3, 5]
    for c in kept:
        assert ap[c] == pytest.approx(skm.average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)
    assert np.isnan(ap[4])
    reference = skm.average_precision_score(targets[:, kept], scores[:, kept], average="macro")
    assert mean_ap == pytest.approx(reference, abs=1e-12)


def test_sklearn_style_ap_groups_minus_inf_ties():
    scores = np.array([1.0, -np.inf, -np.inf])
    # One threshold at 1.0 (P=1, R=1/2) and one at -inf (P=2/3, R=1): AP = 1/2 + 1/3.
    assert M.binary_average_precision(scores, np.array([1, 0, 1])) == pytest.approx(1 / 2 + 1 / 3, abs=1e-15)


def test_probabilities_are_stable_and_normalised():
    assert sigmoid(np.array([-1000.0, 0.0, 1000.0])).tolist() == [0.0, 0.5, 1.0]
    probs = softmax(np.array([[1000.0, 0.0], [1.0, 1.0]]))
    np.testing.assert_allclose(probs, [[1.0, 0.0], [0.5, 0.5]])


def test_fuse_views_max_and_mean_by_video_whatever_the_row_order():
    ids = np.array(["b", "a", "b", "a", "b"])
    scores = np.array([[0.1, 0.9], [0.4, 0.2], [0.7, 0.3], [0.6, 0.0], [0.4, 0.0]])
    targets = np.array([[0, 1], [1, 0], [0, 1], [1, 0], [0, 1]])
    fused_ids, fused, fused_targets, views = fuse_views(ids, scores, targets, "max")
    assert fused_ids.tolist() == ["a", "b"] and views.tolist() == [2, 3]
    np.testing.assert_allclose(fused, [[0.6, 0.2], [0.7, 0.9]])
    assert fused_targets.tolist() == [[1, 0], [0, 1]]
    _, mean, _, _ = fuse_views(ids, scores, targets, "mean")
    np.testing.assert_allclose(mean, [[0.5, 0.1], [0.4, 0.4]])


def test_fuse_views_refuses_disagreeing_targets_and_unknown_rules():
    with pytest.raises(UsageError, match="video a"):
        fuse_views(np.array(["a", "a"]), np.zeros((2, 2)), np.array([[1, 0], [0, 1]]), "max")
    with pytest.raises(UsageError, match="sum"):
        fuse_views(np.array(["a"]), np.zeros((1, 2)), np.array([[1, 0]]), "sum")


def test_fuse_runs_weighs_runs_equally_and_refuses_other_videos():
    ids = np.array(["a", "b"])
    targets = np.array([[1, 0], [0, 1]])
    one = (ids, np.array([[0.2, 0.8], [0.6, 0.4]]), targets)
    two = (ids, np.array([[0.4, 0.2], [0.2, 0.4]]), targets)
    _, mean, _ = fuse_runs([one, two], ["r1", "r2"], "mean")
    np.testing.assert_allclose(mean, [[0.3, 0.5], [0.4, 0.4]])
    _, top, _ = fuse_runs([one, two], ["r1", "r2"], "max")
    np.testing.assert_allclose(top, [[0.4, 0.8], [0.6, 0.4]])
    other = (np.array(["a", "c"]), two[1], targets)
    with pytest.raises(UsageError, match="r2: covers different videos than r1"):
        fuse_runs([one, other], ["r1", "r2"], "max")
