"""The official Charades classification metric (``Charades_v1_classify.m``) and its file formats.

The official algorithm, reproduced exactly (bit for bit on the real fixture):

1. A score matrix (ground-truth videos x classes) starts at -inf.
2. Rows of ground-truth videos found in the submission are filled; ids not in
   the ground truth are ignored; ground-truth videos without any action are
   never filled (they keep -inf and sink to the bottom of every ranking).
3. Per class, videos are ranked as ``THUMOSeventclspr`` does, by MATLAB's
   ascending ``sort(-conf)``: stable (tied videos keep ground-truth file order),
   -inf after every finite score and NaN after everything (a score that does not
   parse is NaN and ranked last). Precision is taken at every rank; AP is the mean of the
   precisions at the positive videos (non-interpolated); NaN for a class
   without positives (MATLAB's 0/0).
4. mAP = mean AP over all classes; wAP = sum_c AP_c * npos_c / sum_c npos_c.
   Sums run left to right, like MATLAB's loop and ``sum``.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hoitool.errors import UsageError
from hoitool.io.atomic import atomic_path

CHARADES_CLASSES = 157
_ACTION_CODE = re.compile(r"c(\d+)")


@dataclass
class CharadesGT:
    """Video-level ground truth: ids in file order and a (videos, classes) 0/1 matrix."""

    ids: list[str]
    labels: np.ndarray


@dataclass
class AlignedSubmission:
    scores: np.ndarray  # (ground-truth videos, classes), -inf where not filled
    matched: int  # ground-truth videos with actions that the submission scored
    missing: int  # ground-truth videos with actions that the submission lacks
    ignored: int  # submission ids not in the ground truth


def official_order(values: np.ndarray) -> np.ndarray:
    """The permutation of the official script's ``sort(-conf)`` (ascending): best score first,
    stable (ties keep file order), -inf after the finite scores, NaN last (MATLAB sorts NaN to the end)."""
    values = np.asarray(values, dtype=np.float64)
    is_nan = np.isnan(values)
    if not is_nan.any():
        return np.argsort(-values, kind="stable")
    return np.lexsort((np.where(is_nan, 0.0, -values), is_nan))


def _sequential_sum(values: np.ndarray) -> float:
    """Left-to-right sum (MATLAB's order), so the last bits match the reference."""
    return float(np.cumsum(values)[-1]) if len(values) else 0.0


def official_average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """``THUMOSeventclspr`` of the official script: mean precision at the positives of a stable descending ranking."""
    hits = (np.asarray(positives) > 0)[official_order(scores)]
    n_positive = int(hits.sum())
    if n_positive == 0:
        return float("nan")
    true_positive = np.cumsum(hits)
    precision = true_positive / np.arange(1, hits.size + 1)
    return _sequential_sum(precision[hits]) / n_positive


def charades_map(scores: np.ndarray, gt: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Official Charades mAP: returns ``(map, wap, ap_per_class)``.

    ``scores`` (videos, classes) with -inf for videos the submission lacks;
    ``gt`` the 0/1 labels in ground-truth file order (ties keep this order).
    Rows of videos without labels are forced to -inf, as the official script
    never fills them. A class without positives has AP NaN, which makes mAP
    and wAP NaN, as in the official script.
    """
    scores = np.array(scores, dtype=np.float64)
    positives = np.asarray(gt) > 0
    if scores.shape != positives.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and gt {positives.shape} must be the same (videos, classes) shape")
    scores[~positives.any(axis=1)] = -np.inf
    ap = np.array([official_average_precision(scores[:, c], positives[:, c]) for c in range(scores.shape[1])])
    n_positive = positives.sum(axis=0).astype(np.float64)
    mean_ap = _sequential_sum(ap) / ap.size if ap.size else float("nan")
    total = _sequential_sum(n_positive)
    weighted_ap = _sequential_sum(ap * n_positive) / total if total else float("nan")
    return mean_ap, weighted_ap, ap


def parse_actions(text: str, num_classes: int, where: str) -> list[int]:
    """Class indices of an ``actions`` field: ``cNNN start end`` joined by ``;`` (may be empty)."""
    classes = []
    for token in text.split(";"):
        fields = token.split()
        if not fields:
            continue
        code = _ACTION_CODE.fullmatch(fields[0])
        if len(fields) != 3 or code is None:
            raise UsageError(f"{where}: bad action {token.strip()!r} (expected 'cNNN start end')")
        try:
            float(fields[1]), float(fields[2])
        except ValueError:
            raise UsageError(f"{where}: bad action {token.strip()!r} (start and end must be numbers)") from None
        index = int(code.group(1))
        if index >= num_classes:
            raise UsageError(f"{where}: class {fields[0]} out of range for {num_classes} classes")
        classes.append(index)
    return classes


def read_charades_gt(path: Path | str, num_classes: int = CHARADES_CLASSES) -> CharadesGT:
    """Read ``Charades_v1_test.csv`` (or train): video ids in file order and their action classes."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: ground-truth CSV not found")
    ids: list[str] = []
    rows: list[list[int]] = []
    seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or "id" not in header or "actions" not in header:
            raise UsageError(f"{path}:1: expected a header with 'id' and 'actions' columns")
        id_col, actions_col = header.index("id"), header.index("actions")
        start_line = reader.line_num + 1
        for record in reader:
            where = f"{path}:{start_line}"
            if not record or not any(field.strip() for field in record):
                start_line = reader.line_num + 1
                continue
            if len(record) != len(header):
                raise UsageError(f"{where}: {len(record)} fields, the header has {len(header)}")
            video = record[id_col].strip()
            if not video:
                raise UsageError(f"{where}: empty video id")
            if video in seen:
                raise UsageError(f"{where}: video {video} already listed at line {seen[video]}")
            seen[video] = start_line
            ids.append(video)
            rows.append(parse_actions(record[actions_col], num_classes, where))
            start_line = reader.line_num + 1
    labels = np.zeros((len(ids), num_classes), dtype=np.uint8)
    for row, classes in enumerate(rows):
        labels[row, classes] = 1
    return CharadesGT(ids=ids, labels=labels)


def read_submission(path: Path | str, num_classes: int = CHARADES_CLASSES) -> tuple[list[str], np.ndarray]:
    """Read a submission: ``id s_0 ... s_{C-1}`` per line, space or tab separated; one line per video."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: submission file not found")
    ids: list[str] = []
    scores: list[list[float]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{number}"
            if len(fields) != num_classes + 1:
                raise UsageError(
                    f"{where}: expected a video id and {num_classes} scores, found {len(fields) - 1} scores"
                )
            if fields[0] in seen:
                raise UsageError(f"{where}: video {fields[0]} already scored at line {seen[fields[0]]}")
            try:
                scores.append([float(value) for value in fields[1:]])
            except ValueError:
                bad = next(value for value in fields[1:] if not _is_float(value))
                raise UsageError(f"{where}: score {bad!r} is not a number") from None
            seen[fields[0]] = number
            ids.append(fields[0])
    return ids, np.array(scores, dtype=np.float64).reshape(len(ids), num_classes)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def write_submission(path: Path | str, ids, scores: np.ndarray) -> None:
    """Write a submission atomically; scores at full precision (shortest exact repr) so re-reading changes nothing."""
    scores = np.asarray(scores, dtype=np.float64)
    lines = []
    for video, row in zip(ids, scores, strict=False):
        video = str(video)
        if not video or any(ch.isspace() for ch in video):
            raise UsageError(f"{path}: video id {video!r} cannot be written (empty or contains whitespace)")
        lines.append(video + " " + " ".join(_format_score(value) for value in row.tolist()))
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _format_score(value: float) -> str:
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def align_submission(ids: list[str], scores: np.ndarray, gt: CharadesGT) -> AlignedSubmission:
    """Place submitted rows in ground-truth order; everything else stays -inf (official steps 1-2)."""
    has_labels = np.asarray(gt.labels.any(axis=1))
    row_of = {video: row for row, video in enumerate(gt.ids)}
    aligned = np.full(gt.labels.shape, -np.inf)
    filled = np.zeros(len(gt.ids), dtype=bool)
    ignored = 0
    for video, values in zip(ids, scores, strict=False):
        row = row_of.get(video)
        if row is None:
            ignored += 1
        elif has_labels[row]:
            aligned[row] = values
            filled[row] = True
    return AlignedSubmission(
        scores=aligned, matched=int(filled.sum()), missing=int((has_labels & ~filled).sum()), ignored=ignored
    )


def official_scores(ids, scores: np.ndarray, gt: CharadesGT) -> tuple[float, float, np.ndarray, AlignedSubmission]:
    """The official metric of per-video scores against the full ground-truth list: ``(map, wap, ap, aligned)``.

    The one path that submission files and run outputs both take: ids are placed
    in ground-truth order (ties in the official order), videos without scores stay
    -inf and ids outside the ground truth are ignored, as ``Charades_v1_classify.m`` does.
    """
    aligned = align_submission(list(ids), np.asarray(scores, dtype=np.float64), gt)
    mean_ap, weighted_ap, ap = charades_map(aligned.scores, gt.labels)
    return mean_ap, weighted_ap, ap, aligned
