"""Anticipation by distillation (hoitool.nn.anticipation): Eq. 1-5 against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from descent import descend

from hoitool.errors import UsageError
from hoitool.manifest import VideoEntry
from hoitool.nn.anticipation import (
    AnticipationObjective,
    LeadTime,
    attentional_distill_loss,
    attentional_pool,
    default_alpha,
    direct_distill_loss,
    forward_with_embeddings,
    label_at,
    lead_time_pair,
    observe_until,
    parse_lead_time,
    scores_at_lead_times,
    unlabelled_videos,
)
from hoitool.nn.models import ContextGraphNet


def _t(rows) -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.float64)


def _phi_reference(q: np.ndarray, R: np.ndarray, alpha: float) -> np.ndarray:
    """phi(q, R) = sum_k w_k r_k, w_k = exp(alpha r_k.q) / Z, written out as in the paper's Sec. 2.2."""
    w = np.array([math.exp(alpha * float(r @ q)) for r in R])
    w /= w.sum()
    return sum(wk * r for wk, r in zip(w, R, strict=False))


def _ld_reference(A: np.ndarray, R: np.ndarray, alpha: float) -> float:
    """Eq. 3-5 with squared L2, loops over the vectors."""
    forward = sum(float(np.sum((_phi_reference(a, R, alpha) - _phi_reference(a, A, alpha)) ** 2)) for a in A)
    backward = sum(float(np.sum((_phi_reference(r, A, alpha) - _phi_reference(r, R, alpha)) ** 2)) for r in R)
    return forward + backward


# -- phi ------------------------------------------------------------------------------------------


def test_phi_small_alpha_is_the_average_of_the_valid_vectors():
    keys = _t([[1.0, 2.0], [3.0, -1.0], [100.0, 100.0]])  # the last one is padding
    valid = torch.tensor([[True, True, False]])
    query = _t([[0.5, 4.0]])
    pooled = attentional_pool(query, keys, valid, alpha=1e-9)
    assert torch.allclose(pooled, _t([[2.0, 0.5]]), atol=1e-6)


def test_phi_large_alpha_is_the_most_similar_valid_vector():
    keys = _t([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [9.0, 0.0]])  # [9, 0] would win but is padding
    valid = torch.tensor([[True, True, True, False]])
    pooled = attentional_pool(_t([[1.0, 0.2]]), keys, valid, alpha=1e3)
    assert torch.allclose(pooled, _t([[1.0, 0.0]]), atol=1e-9)
    pooled = attentional_pool(_t([[0.0, 1.0]]), keys, valid, alpha=1e3)
    assert torch.allclose(pooled, _t([[0.0, 1.0]]), atol=1e-9)


def test_phi_by_hand_at_alpha_one():
    e = math.e
    pooled = attentional_pool(_t([[1.0, 0.0]]), _t([[1.0, 0.0], [0.0, 1.0]]), alpha=1.0)
    assert torch.allclose(pooled, _t([[e / (e + 1), 1 / (e + 1)]]), atol=1e-12)


def test_phi_padding_gets_zero_weight_and_empty_maps_pool_to_zero():
    keys = _t([[1.0, 0.0], [5.0, 5.0]])
    with_padding = attentional_pool(_t([[1.0, 1.0]]), keys, torch.tensor([[True, False]]), alpha=1.0)
    alone = attentional_pool(_t([[1.0, 1.0]]), keys[:, :1], None, alpha=1.0)
    assert torch.equal(with_padding, alone)
    empty = attentional_pool(_t([[1.0, 1.0]]), keys, torch.tensor([[False, False]]), alpha=1.0)
    assert torch.equal(empty, torch.zeros_like(empty))


def test_default_alpha_is_one_over_root_d():
    assert default_alpha(512) == pytest.approx(1 / math.sqrt(512))


# -- L_d ------------------------------------------------------------------------------------------


def test_ld_one_vector_each_by_hand():
    A, R = _t([[1.0, 0.0]]), _t([[0.0, 1.0]])
    ones = torch.ones(1, 1, dtype=torch.bool)
    # phi(a, R) = r, phi(a, A) = a: ||r - a||^2 = 2 in each direction
    assert attentional_distill_loss(A, ones, R, ones, penalty="l2").item() == pytest.approx(4.0)
    assert attentional_distill_loss(A, ones, R, ones, penalty="l2", direction="student").item() == pytest.approx(2.0)
    assert attentional_distill_loss(A, ones, R, ones, penalty="l2", direction="teacher").item() == pytest.approx(2.0)
    # Huber, delta 1, |x| = 1 per channel: 0.5 * 1^2 per channel and direction
    assert attentional_distill_loss(A, ones, R, ones, penalty="huber").item() == pytest.approx(2.0)


def test_huber_vs_l2_beyond_delta():
    A, R = _t([[3.0, 0.0]]), _t([[0.0, 0.0]])
    ones = torch.ones(1, 1, dtype=torch.bool)
    assert attentional_distill_loss(A, ones, R, ones, penalty="l2").item() == pytest.approx(2 * 9.0)
    assert attentional_distill_loss(A, ones, R, ones, penalty="huber", delta=1.0).item() == pytest.approx(2 * (3 - 0.5))
    assert attentional_distill_loss(A, ones, R, ones, penalty="huber", delta=4.0).item() == pytest.approx(2 * 0.5 * 9)


def test_ld_equals_the_written_out_equation():
    rng = np.random.default_rng(0)
    A, R = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    for alpha in (0.5, default_alpha(4), 2.0):
        got = attentional_distill_loss(
            torch.tensor(A)[None],
            torch.ones(1, 3, dtype=torch.bool),
            torch.tensor(R)[None],
            torch.ones(1, 5, dtype=torch.bool),
            alpha=alpha,
            penalty="l2",
        )
        assert got.item() == pytest.approx(_ld_reference(A, R, alpha), rel=1e-10)


def test_ld_ignores_padding_and_is_per_sample():
    rng = np.random.default_rng(1)
    A, R = torch.tensor(rng.normal(size=(1, 3, 4))), torch.tensor(rng.normal(size=(1, 2, 4)))
    reference = attentional_distill_loss(A, torch.ones(1, 3, dtype=torch.bool), R, torch.ones(1, 2, dtype=torch.bool))
    A_pad = torch.cat([A, 50 * torch.ones(1, 2, 4, dtype=A.dtype)], dim=1)
    R_pad = torch.cat([R, -50 * torch.ones(1, 3, 4, dtype=R.dtype)], dim=1)
    a_valid = torch.tensor([[True, True, True, False, False]])
    r_valid = torch.tensor([[True, True, False, False, False]])
    padded = attentional_distill_loss(A_pad, a_valid, R_pad, r_valid)
    assert padded.item() == pytest.approx(reference.item(), rel=1e-12)
    batch = attentional_distill_loss(
        torch.cat([A_pad, A_pad]),
        torch.cat([a_valid, a_valid]),
        torch.cat([R_pad, R_pad]),
        torch.cat([r_valid, r_valid]),
    )
    assert batch.shape == (2,) and torch.allclose(batch, reference.expand(2))
    mean = attentional_distill_loss(A_pad, a_valid, R_pad, r_valid, reduction="mean", direction="student")
    total = attentional_distill_loss(A_pad, a_valid, R_pad, r_valid, reduction="sum", direction="student")
    assert mean.item() == pytest.approx(total.item() / 3)


def test_ld_is_zero_for_equal_maps_and_blind_to_node_order_unlike_direct():
    rng = np.random.default_rng(2)
    A = torch.tensor(rng.normal(size=(1, 4, 3)))
    ones = torch.ones(1, 4, dtype=torch.bool)
    assert attentional_distill_loss(A, ones, A.clone(), ones).item() == pytest.approx(0.0, abs=1e-12)
    shuffled = A[:, [2, 0, 3, 1]]
    assert attentional_distill_loss(A, ones, shuffled, ones).item() == pytest.approx(0.0, abs=1e-12)
    assert direct_distill_loss(A, ones, shuffled, ones).item() > 0.1  # L_direct needs slot correspondence


def test_direct_loss_by_hand_over_slots_valid_in_both():
    A = _t([[1.0, 2.0], [0.0, 0.0], [7.0, 7.0]])
    R = _t([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    a_valid, r_valid = torch.tensor([[True, True, True]]), torch.tensor([[True, True, False]])
    assert direct_distill_loss(A, a_valid, R, r_valid).item() == pytest.approx(5.0 + 2.0)


def test_teacher_gets_no_gradient_student_does():
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, requires_grad=True)
    ones = torch.ones(2, 3, dtype=torch.bool)
    attentional_distill_loss(student, ones, teacher, ones).sum().backward()
    assert teacher.grad is None and student.grad is not None and torch.isfinite(student.grad).all()


# -- Eq. 1-2 --------------------------------------------------------------------------------------


def test_objective_labels_where_labelled_teacher_soft_predictions_elsewhere():
    torch.manual_seed(0)
    logits, teacher = torch.randn(3, 4), torch.randn(3, 4)
    targets = torch.tensor([2, -1, 0])  # -1: unlabelled (the value is never read)
    labelled = torch.tensor([True, False, True])
    emb_s, emb_t = torch.randn(3, 5, 6), torch.randn(3, 7, 6)
    valid_s, valid_t = torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 7, dtype=torch.bool)
    objective = AnticipationObjective(multilabel=False, lam=0.5, penalty="huber")
    terms = objective(logits, targets, labelled, teacher, emb_s, valid_s, emb_t, valid_t)
    ce = F.cross_entropy(logits[[0, 2]], targets[[0, 2]], reduction="none")
    assert torch.allclose(terms["ce"][[0, 2]], ce) and terms["ce"][1] == 0
    kl = (F.softmax(teacher[1], 0) * (F.log_softmax(teacher[1], 0) - F.log_softmax(logits[1], 0))).sum()
    assert terms["soft"][1].item() == pytest.approx(kl.item(), rel=1e-5) and terms["soft"][[0, 2]].abs().sum() == 0
    distill = attentional_distill_loss(emb_s, valid_s, emb_t, valid_t, penalty="huber")
    assert torch.allclose(terms["distill"], distill)
    assert torch.allclose(terms["total"], terms["ce"] + terms["soft"] + 0.5 * distill)


def test_objective_multilabel_and_direct():
    logits, teacher = torch.randn(2, 3), torch.randn(2, 3)
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    emb = torch.randn(2, 4, 5)
    valid = torch.ones(2, 4, dtype=torch.bool)
    terms = AnticipationObjective(multilabel=True, loss="direct")(
        logits, targets, torch.tensor([True, False]), teacher, emb, valid, emb, valid
    )
    bce = F.binary_cross_entropy_with_logits(logits[0], targets[0])
    assert terms["ce"][0].item() == pytest.approx(bce.item(), rel=1e-6)
    assert terms["distill"].abs().sum() == 0 and terms["soft"][1] > 0


# -- node embeddings after the graph layers -------------------------------------------------------


@pytest.mark.parametrize("view", ["global", "local", "baseline"])
def test_forward_with_embeddings_has_the_models_logits(view):
    torch.manual_seed(0)
    model = ContextGraphNet(6, 3, view, hidden=8, layers=2).eval()
    nodes = torch.randn(2, 3, 4, 6).half()
    valid = torch.rand(2, 3, 4) > 0.3
    logits, embeddings, flat_valid = forward_with_embeddings(model, nodes, valid)
    assert torch.allclose(logits, model(nodes, valid), atol=1e-6)
    assert embeddings.shape == (2, 12, 8) and torch.equal(flat_valid, valid.flatten(1))


# -- lead time ------------------------------------------------------------------------------------


def _view(frame_indices, k=2, d=3):
    t = len(frame_indices)
    return {
        "frame_indices": np.array(frame_indices),
        "frame_valid": np.ones(t, dtype=bool),
        "valid": np.ones((t, k), dtype=bool),
        "nodes": np.ones((t, k, d), dtype=np.float16),
        "boxes": np.full((t, k, 4), 5, dtype=np.float32),
    }


def test_parse_lead_time():
    assert parse_lead_time("1.5") == LeadTime(seconds=1.5)
    assert parse_lead_time("2s") == LeadTime(seconds=2.0)
    assert parse_lead_time("80%") == LeadTime(fraction=0.8)
    for bad in ("", "-1", "abc", "1.5m", "100%"):
        with pytest.raises(UsageError):
            parse_lead_time(bad)


def test_observe_until_masks_and_zeroes_the_future():
    view = _view([0, 10, 20, 30])
    view["frame_valid"][3] = False  # padding stays padding
    view["valid"][1, 1] = False
    seen = observe_until(view, 15)
    assert seen["frame_valid"].tolist() == [True, True, False, False]
    assert seen["valid"].tolist() == [[True, True], [True, False], [False, False], [False, False]]
    assert (seen["nodes"][2:] == 0).all() and (seen["nodes"][:2] == 1).all()
    assert (seen["boxes"][2:] == 0).all() and (seen["boxes"][:2] == 5).all()
    assert (view["nodes"] == 1).all() and view["frame_valid"][2]  # the input is untouched


def test_lead_time_pair_seconds_and_the_jhmdb_fraction():
    view = _view(list(range(0, 100, 10)))  # 10 sampled frames of a 100-frame video
    student, teacher = lead_time_pair(view, LeadTime(seconds=2.0), fps=10.0, num_frames=100, t=60)
    assert student["frame_valid"].tolist() == [True] * 5 + [False] * 5  # frames <= 40
    assert teacher["frame_valid"].tolist() == [True] * 7 + [False] * 3  # frames <= 60
    student, teacher = lead_time_pair(view, LeadTime(fraction=0.8), fps=None, num_frames=100)
    assert student["frame_valid"].tolist() == [True] * 2 + [False] * 8  # the first 20 % of the frames
    assert teacher["frame_valid"].all()


def test_lead_time_needs_fps_or_frame_count():
    with pytest.raises(UsageError, match="vid7.*fps"):
        LeadTime(seconds=1.0).frames(None, 100, video="vid7")
    with pytest.raises(UsageError, match="frame count"):
        LeadTime(fraction=0.5).frames(30.0, None)
    with pytest.raises(UsageError):
        LeadTime(seconds=1.0, fraction=0.5)


def test_label_at_segments():
    segments = [[0, 9, "reaching"], [10, 30, "moving"], [25, 40, "placing"]]
    assert label_at(segments, 5) == "reaching"
    assert label_at(segments, 10) == "moving"
    assert label_at(segments, 27) == "placing"  # overlap: the later start wins
    assert label_at(segments, 50, default="none") == "none"


def test_scores_at_lead_times_truncate_each_sample():
    view = _view(list(range(0, 100, 10)))
    samples = [("a", view, 10.0, 100, None), ("b", view, 10.0, 100, 50)]
    scores = scores_at_lead_times(
        lambda v: [v["frame_valid"].sum(), v["valid"].sum()],
        samples,
        [LeadTime(seconds=0.0), LeadTime(seconds=3.0), LeadTime(fraction=0.5)],
    )
    assert list(scores) == ["0s", "3s", "50%"]
    assert scores["0s"].tolist() == [[10, 20], [6, 12]]  # a: every frame; b: frames <= 50
    assert scores["3s"].tolist() == [[7, 14], [3, 6]]  # a: frames <= 69; b: frames <= 20
    assert scores["50%"].tolist() == [[5, 10], [1, 2]]  # a: frames <= 49; b: frames <= 0


def _chamfer(a: torch.Tensor, b: torch.Tensor) -> float:
    distances = torch.cdist(a, b)
    return (distances.min(2).values.mean() + distances.min(1).values.mean()).item()


@pytest.mark.parametrize("loss, learns", [("attention", True), ("direct", False)])
def test_toy_ld_distils_moved_content_where_l_direct_cannot(loss, learns):
    """The paper's motivation: the student sees the teacher's vectors at other places (a random permutation per
    video). L_d brings the student's set onto the teacher's; L_direct, pairing slot to slot, cannot."""
    g = torch.Generator().manual_seed(0)
    b, n, d = 16, 5, 4
    teacher = torch.randn(b, n, d, generator=g)
    moved = teacher[torch.arange(b)[:, None], torch.stack([torch.randperm(n, generator=g) for _ in range(b)])]
    valid = torch.ones(b, n, dtype=torch.bool)
    torch.manual_seed(0)
    student = torch.nn.Linear(d, d)
    fn = attentional_distill_loss if loss == "attention" else direct_distill_loss
    descend(student.parameters(), lambda: fn(student(moved), valid, teacher, valid, penalty="l2").mean(), 100, 0.02)
    with torch.no_grad():
        distance = _chamfer(student(moved), teacher)
    assert (distance < 0.05) if learns else (distance > 1.0)


def test_unlabelled_videos_from_the_manifest_and_a_list(tmp_path):
    videos = [
        VideoEntry("a", "a.mp4", [0], "train"),
        VideoEntry("b", "b.mp4", [1], "train", extra={"unlabelled": True}),
        VideoEntry("c", "c.mp4", [0], "train"),
    ]
    assert unlabelled_videos(videos) == {"b"}
    listed = tmp_path / "unlabelled.txt"
    listed.write_text("# extra clips\nc\n\n")
    assert unlabelled_videos(videos, listed) == {"b", "c"}
    listed.write_text("c\nz  # a typo\n")
    with pytest.raises(UsageError, match=r"unlabelled.txt:2: video 'z' is not in the manifest"):
        unlabelled_videos(videos, listed)
    with pytest.raises(UsageError, match="not found"):
        unlabelled_videos(videos, tmp_path / "missing.txt")


# -- anticipation.at: events (hoitool.train.methods.anticipation_events) --------------------------


def _entry(video, extra, fps=None, num_frames=None, labels=(0,)):
    return VideoEntry(video, f"{video}.mp4", list(labels), "train", fps=fps, num_frames=num_frames, extra=extra)


def test_event_times_of_the_three_annotation_forms_by_hand():
    from hoitool.nn.anticipation import event_times

    # Charades: [class, start_s, end_s] at 4 fps -> floor(end * 4): 2.6 s -> 10, 7.9 s -> 31, 20 s -> clipped to 39
    charades = _entry("c", {"actions": [[3, 0.0, 2.6], [5, 1.0, 7.9], [3, 6.0, 20.0], [7, 0.5, 2.6]]}, 4.0, 40)
    assert event_times(charades) == [10.0, 31.0, 39.0]  # the two actions ending at 2.6 s are one time
    # CAD-120: [start, end, label], 0-based inclusive frames -> the segment's last frame
    cad = _entry("k", {"segments": [[0, 24, "reaching"], [25, 61, "moving"], [62, 99, "placing"]]}, None, 100)
    assert event_times(cad) == [24.0, 61.0, 99.0]
    # synthetic turns: frames [start, end) -> end - 1
    synthetic = _entry("s", {"turns": [{"frames": [0, 5]}, {"frames": [5, 11]}, {"frames": [11, 15]}]}, 5.0, 15)
    assert event_times(synthetic) == [4.0, 10.0, 14.0]
    assert event_times(_entry("n", {}, 5.0, 15)) == []  # no annotation: the caller uses the video's end
    with pytest.raises(UsageError, match="'c2'.*no fps"):
        event_times(_entry("c2", {"actions": [[1, 0.0, 1.0]]}, None, 40))
    with pytest.raises(UsageError, match="'bad': malformed"):
        event_times(_entry("bad", {"segments": [[0, "x"]]}, None, 40))


def test_event_draw_is_a_pure_function_of_seed_epoch_and_video():
    from hoitool.train.methods.anticipation_events import draw_events

    counts = np.array([1, 3, 2, 5, 4])
    first = draw_events(counts, seed=7, epoch=3)
    assert (first >= 0).all() and (first < counts).all() and first[0] == 0
    np.random.seed(123)  # the global RNGs a resumed run restores differently play no part
    torch.manual_seed(5)
    assert np.array_equal(draw_events(counts, 7, 3), first)  # a resumed epoch 3 draws the same
    # the same uniforms whatever the other videos' counts: video p's draw depends on (seed, epoch, p) only
    assert draw_events(np.array([9, 3, 9, 9, 9]), 7, 3)[1] == first[1]
    epochs = np.stack([draw_events(counts, 7, epoch) for epoch in range(1, 41)])
    assert not (epochs == epochs[0]).all()  # epochs differ
    assert set(epochs[:, 3]) == set(range(5))  # over 40 epochs a 5-event video trains on each of its events
    seeds = np.stack([draw_events(counts, seed, 3) for seed in range(10)])
    assert not (seeds == seeds[0]).all()  # so do seeds


def test_labels_at_t_of_a_charades_like_manifest_by_hand():
    from hoitool.manifest import Manifest
    from hoitool.train.data import split_videos
    from hoitool.train.methods.anticipation_events import split_events

    classes = [f"c{i}" for i in range(4)]
    # fps 2: action 1 [0, 3] s ends at frame 6, action 2 [2, 5] s at frame 10, action 0 [4.5, 6] s at frame 12
    video = VideoEntry(
        "v", "v.mp4", [0, 1, 2], "train", fps=2.0, num_frames=20, extra={"actions": [[1, 0, 3], [2, 2, 5], [0, 4.5, 6]]}
    )
    plain = VideoEntry("w", "w.mp4", [3], "train", fps=2.0, num_frames=8, extra={})
    manifest = Manifest(dataset="charades", classes=classes, multilabel=True, videos=[video, plain])
    videos = split_videos(manifest, ["v", "w"], "train")
    events = split_events(manifest, videos, LeadTime(seconds=1.0), "at_t")
    assert events.ids == ["v@6", "v@10", "v@12", "w@7"]
    assert events.t.tolist() == [6, 10, 12, 7] and events.tau.tolist() == [2, 2, 2, 2]
    # t = 3 s holds actions 1 and 2; t = 5 s actions 2 and 0 (4.5 <= 5 <= 6); t = 6 s action 0 only
    expected = np.array([[0, 1, 1, 0], [1, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    assert np.array_equal(events.targets, expected)  # w has no events: its end, its video labels
    assert events.counts.tolist() == [3, 1] and events.offsets.tolist() == [0, 3]
    by_video = split_events(manifest, videos, LeadTime(seconds=1.0), "video")
    assert np.array_equal(by_video.targets[:3], np.repeat(videos.targets[:1], 3, axis=0))
    expanded = events.expanded(videos)
    assert expanded.video_ids == events.ids and expanded.one_hot().shape == (4, 4)
    assert events.aliases(videos) == {"v@6": "v", "v@10": "v", "v@12": "v", "w@7": "w"}


def test_a_cut_before_the_first_sampled_frame_leaves_the_student_nothing_a_constant_guess():
    """The rule: the sample is kept (counted in validation and eval) and the student sees no frame, so
    its logits are the classifier's bias (empty graphs pool to zeros)."""
    from hoitool.nn.anticipation import truncate_batch

    torch.manual_seed(0)
    model = ContextGraphNet(4, 3, "global", hidden=8).eval()
    batch = {
        "nodes": torch.randn(2, 3, 2, 4),
        "valid": torch.ones(2, 3, 2, dtype=torch.bool),
        "boxes": torch.zeros(2, 3, 2, 4),
        "frame_indices": torch.tensor([[2, 5, 8], [2, 5, 8]]),
    }
    # row 0: t = 6, tau = 5 -> sees frames <= 1: none of 2, 5, 8; row 1: t = 6, tau = 1 -> frames 2 and 5
    cut = truncate_batch(batch, torch.tensor([6.0, 6.0], dtype=torch.float64), torch.tensor([5.0, 1.0]).double())
    assert not cut["valid"][0].any() and cut["valid"][1].any(dim=-1).tolist() == [True, True, False]
    logits = model(cut["nodes"], cut["valid"])
    assert torch.allclose(logits[0], model.classifier.bias)
