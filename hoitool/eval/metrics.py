"""Classification metrics in plain numpy (scikit-learn is only the tests' reference).

Single-label: top-k accuracy, confusion matrix, per-class precision/recall/F1,
macro-F1. Multi-label: the PySlowFast/scikit-learn style mAP; the official
Charades mAP lives in :mod:`hoitool.eval.charades`.

Ties: the predicted class is the lowest-index maximum (``np.argmax``), and top-k
takes the first k of a stable descending sort, so top-1 accuracy and the
confusion matrix always agree.
"""

from __future__ import annotations

import numpy as np


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the k highest scores."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((ranked == labels[:, None]).any(axis=1).mean())


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return top_k_accuracy(scores, labels, 1)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def per_class_prf(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where undefined (as scikit-learn's zero_division=0)."""
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    predicted = confusion.sum(axis=0)
    support = confusion.sum(axis=1)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over the classes that occur as a label or a prediction (scikit-learn's ``average='macro'``)."""
    confusion = np.asarray(confusion)
    present = (confusion.sum(axis=0) + confusion.sum(axis=1)) > 0
    if not present.any():
        return float("nan")
    return float(per_class_prf(confusion)["f1"][present].mean())


def binary_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """scikit-learn's ``average_precision_score`` for one class: AP = sum_n (R_n - R_{n-1}) P_n.

    Tied scores form one threshold (unlike the official Charades AP, which
    ranks tied videos in file order). NaN when the class has no positives.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives) > 0
    n_positive = positives.sum()
    if n_positive == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")[::-1]
    sorted_scores = scores[order]
    true_positive = np.cumsum(positives[order])
    last_of_tie = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), sorted_scores.size - 1]
    tp = true_positive[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_step = np.diff(np.r_[0, tp]) / n_positive
    return float(np.sum(recall_step * precision))


def sklearn_style_map(scores: np.ndarray, targets: np.ndarray) -> tuple[float, np.ndarray]:
    """PySlowFast's Charades mAP: scikit-learn AP per class, classes without positives dropped.

    Returns ``(map, ap_per_class)``; dropped classes are NaN in ``ap_per_class``.
    Differs from the official metric on ties and on videos without labels.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    ap = np.array([binary_average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])])
    kept = ~np.isnan(ap)
    return (float(ap[kept].mean()) if kept.any() else float("nan")), ap
