"""Contrastive distillation (hoitool.nn.contrastive): each loss against a hand computation on tiny tensors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from descent import descend

from hoitool.nn.contrastive import (
    ContrastiveObjective,
    PairHead,
    i2t_loss,
    label_free_targets,
    masked_mean,
    pair_geometry,
    soft_relation_loss,
    soft_relation_targets,
    symmetric_info_nce,
    t2i_loss,
    video_scores,
)
from hoitool.text.cache import build_text_embeddings, load_text_embeddings, pair_text
from hoitool.text.encoders import TinyTextEncoder
from hoitool.text.vlm_import import read_vlm_import


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _nll(logit, others):
    """-log(e^logit / (e^logit + sum e^others)), written out."""
    return -math.log(math.exp(logit) / (math.exp(logit) + sum(math.exp(o) for o in others)))


# -- InfoNCE --------------------------------------------------------------------------------------


def test_info_nce_2x2_by_hand():
    video = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    text = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    s = _unit(video.numpy()) @ _unit(text.numpy()).T / tau  # [[1, .707], [0, .707]] / tau
    expected = [
        0.5 * (_nll(s[0, 0], [s[0, 1]]) + _nll(s[0, 0], [s[1, 0]])),
        0.5 * (_nll(s[1, 1], [s[1, 0]]) + _nll(s[1, 1], [s[0, 1]])),
    ]
    got = symmetric_info_nce(video, text, temperature=tau)
    assert np.allclose(got.numpy(), expected, atol=1e-6)


def test_info_nce_is_symmetric_and_its_mean_is_clips_loss():
    torch.manual_seed(0)
    video, text = torch.randn(3, 4), torch.randn(3, 4)
    forward, backward = symmetric_info_nce(video, text, 0.1), symmetric_info_nce(text, video, 0.1)
    assert torch.allclose(forward, backward, atol=1e-6)
    logits = F.normalize(video, dim=1) @ F.normalize(text, dim=1).T / 0.1
    target = torch.arange(3)
    clip = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    assert forward.mean().item() == pytest.approx(clip.item(), rel=1e-5)


def test_info_nce_without_a_caption_is_neither_anchor_nor_negative():
    torch.manual_seed(1)
    video, text = torch.randn(3, 4), torch.randn(3, 4)
    got = symmetric_info_nce(video, text, 0.2, valid=torch.tensor([True, False, True]))
    alone = symmetric_info_nce(video[[0, 2]], text[[0, 2]], 0.2)
    assert got[1] == 0 and torch.allclose(got[[0, 2]], alone, atol=1e-6)


# -- I2T / T2I ------------------------------------------------------------------------------------


def test_i2t_by_hand():
    video = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    tau = 0.5
    s = (_unit(video.numpy()) @ _unit(bank.numpy()).T / tau)[0]
    one = i2t_loss(video, bank, torch.tensor([[True, False, False]]), torch.tensor([[False, True, True]]), tau)
    assert one.item() == pytest.approx(_nll(s[0], [s[1], s[2]]), rel=1e-6)
    two = i2t_loss(video, bank, torch.tensor([[True, False, True]]), torch.tensor([[False, True, False]]), tau)
    assert two.item() == pytest.approx(0.5 * (_nll(s[0], [s[1]]) + _nll(s[2], [s[1]])), rel=1e-6)
    none = i2t_loss(video, bank, torch.tensor([[True, False, False]]), torch.zeros(1, 3, dtype=torch.bool), tau)
    assert none.item() == pytest.approx(0.0, abs=1e-7)
    no_positive = i2t_loss(video, bank, torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool), tau)
    assert no_positive.item() == 0


def test_t2i_by_hand_with_padding_pairs():
    pairs = torch.tensor(
        [
            [[1.0, 0.0], [1.0, 1.0], [0.0, 9.0]],  # video 0, its last pair is padding
            [[0.0, 1.0], [-1.0, 1.0], [5.0, 0.0]],
        ]
    )  # video 1, its last pair is padding
    pair_valid = torch.tensor([[True, True, False], [True, True, False]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    positive = torch.tensor([[True, False], [False, True]])
    tau = 0.5
    cos = np.einsum("bmd,cd->bmc", _unit(pairs.numpy()), _unit(bank.numpy())) / tau
    g = cos[:, :2].max(axis=1)  # best valid pair
    expected = [_nll(g[0, 0], [g[1, 0]]), _nll(g[1, 1], [g[0, 1]])]
    assert np.allclose(t2i_loss(pairs, pair_valid, bank, positive, tau).numpy(), expected, atol=1e-6)
    # a video whose every peer shares the interaction has nothing to contrast with
    both = t2i_loss(pairs, pair_valid, bank, torch.tensor([[True, False], [True, False]]), tau)
    assert torch.allclose(both, torch.zeros(2), atol=1e-7)


# -- soft relation --------------------------------------------------------------------------------


def test_soft_relation_targets_by_hand():
    pair_valid = torch.tensor([[True, True, False]])
    positive = torch.tensor([[True, False]])
    copied = soft_relation_targets(pair_valid, positive)
    assert copied.tolist() == [[[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]]]
    regions = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
    verbs = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    objects = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    tau = 0.5
    got = soft_relation_targets(pair_valid, positive, regions, verbs, objects, torch.tensor([[True, False]]), tau)
    s = 0.5 * (np.array([1, 1]) / math.sqrt(2) + np.array([0.0, 1.0]))  # verb and object cosines of pairs 0 and 1
    q = np.exp(s / tau) / np.exp(s / tau).sum()
    assert np.allclose(got[0, :2, 0].numpy(), q / q.max(), atol=1e-6)
    assert got[0, :, 1].abs().sum() == 0 and got[0, 2].abs().sum() == 0


def test_soft_relation_loss_by_hand():
    pairs = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    targets = torch.tensor([[[1.0, 0.0], [0.25, 0.0]]])
    columns = torch.tensor([[True, False]])  # only interaction 0 is scored
    tau = 2.0
    logits = [1.0 / tau, 0.0 / tau]  # cos(pair_m, bank_0) / tau
    bce = lambda z, y: -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))  # noqa: E731
    expected = 0.5 * (bce(logits[0], 1.0) + bce(logits[1], 0.25))
    got = soft_relation_loss(pairs, torch.ones(1, 2, dtype=torch.bool), bank, targets, columns, tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)


# -- the objective --------------------------------------------------------------------------------


def test_objective_is_the_weighted_sum_and_survives_empty_inputs():
    torch.manual_seed(2)
    video = torch.randn(3, 4, requires_grad=True)
    pairs = torch.randn(3, 5, 4, requires_grad=True)
    pair_valid = torch.rand(3, 5) > 0.3
    pair_valid[2] = False  # a video without any human-object pair
    bank = torch.randn(6, 4)
    positive = torch.zeros(3, 6, dtype=torch.bool)
    positive[0, 1] = positive[1, 2] = positive[2, 3] = True
    negative = torch.zeros(3, 6, dtype=torch.bool)
    negative[0, 4] = True  # video 1 has no negatives
    objective = ContrastiveObjective(w_context=0.5, w_i2t=2.0, w_t2i=1.0, w_sr=0.25)
    terms = objective(
        video, torch.randn(3, 4), torch.tensor([True, True, False]), pairs, pair_valid, bank, positive, negative
    )
    expected = 0.5 * terms["context"] + 2.0 * terms["i2t"] + terms["t2i"] + 0.25 * terms["sr"]
    assert torch.allclose(terms["total"], expected)
    assert torch.allclose(terms["i2t"], i2t_loss(masked_mean(pairs, pair_valid), bank, positive, negative))
    terms["total"].sum().backward()
    assert torch.isfinite(video.grad).all() and torch.isfinite(pairs.grad).all()
    off = ContrastiveObjective(w_context=0.0, w_sr=0.0)(
        video, torch.randn(3, 4), torch.ones(3, dtype=torch.bool), pairs, pair_valid, bank, positive, negative
    )
    assert off["context"].abs().sum() == 0 and off["sr"].abs().sum() == 0
    assert off["context"].requires_grad  # a weight-0 term is 0 but on the outputs' graph (DDP: every parameter used)


class _FakeGather:
    """A stand-in for the DDP gather (hoitool.train.gather.BatchGather) of one "rank" holding ``rows`` of a batch.

    ``whole`` holds the full batch's tensors; a gathered tensor is the whole one whose rows at
    ``rows`` equal the rank's own, with the rank's own rows (and their gradient) put back in.
    """

    def __init__(self, whole: list[torch.Tensor], rows: list[int]):
        self.whole, self.rows = whole, torch.tensor(rows)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for full in self.whole:
            if full.dtype == x.dtype and full.shape[1:] == x.shape[1:] and torch.equal(full[self.rows], x.detach()):
                out = full.clone()
                out[self.rows] = x
                return out
        raise AssertionError(f"gathered an unexpected tensor {tuple(x.shape)}")


def test_objective_over_the_gathered_batch_keeps_its_own_rows_and_leaves_dummies_out():
    from hoitool.nn.contrastive import best_pair_logits

    torch.manual_seed(4)
    video, captions = torch.randn(4, 3), torch.randn(4, 3)
    pairs = torch.randn(4, 5, 3)
    pair_valid = torch.rand(4, 5) > 0.2
    pair_valid[:, 0] = True  # every video has a pair
    bank = torch.randn(6, 3)
    positive = torch.rand(4, 6) > 0.6
    negative = ~positive & (torch.rand(4, 6) > 0.5)
    caption_valid = torch.ones(4, dtype=torch.bool)
    objective = ContrastiveObjective()
    whole = objective(video, captions, caption_valid, pairs, pair_valid, bank, positive, negative)
    g, has_pairs = best_pair_logits(pairs, pair_valid, bank, objective.t_interaction)
    gather = _FakeGather([video, captions, caption_valid, g, has_pairs, positive], [1, 2])
    rows = slice(1, 3)  # this "rank" holds videos 1 and 2; its terms are theirs in the whole batch
    mine = objective(
        video[rows], captions[rows], caption_valid[rows], pairs[rows], pair_valid[rows], bank, positive[rows],
        negative[rows], gather=gather,
    )  # fmt: skip
    for name in ("context", "i2t", "t2i", "sr"):
        torch.testing.assert_close(mine[name], whole[name][rows])
    assert not torch.allclose(  # and not the terms of its share alone
        mine["context"],
        symmetric_info_nce(video[rows], captions[rows], objective.t_context),
    )
    # a zero-weight dummy (real False) is neither anchor nor negative: the others' terms as without it
    real = torch.tensor([True, True, True, False])
    dummy = objective(video, captions, caption_valid, pairs, pair_valid, bank, positive, negative, real=real)
    without = objective(
        video[:3], captions[:3], caption_valid[:3], pairs[:3], pair_valid[:3], bank, positive[:3], negative[:3]
    )
    for name in ("context", "t2i"):
        torch.testing.assert_close(dummy[name][:3], without[name])
        assert dummy[name][3] == 0


# -- label-free targets ---------------------------------------------------------------------------


def test_label_free_targets_from_the_teacher_only():
    classes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    teacher = torch.tensor(
        [
            [[0.0, 1.0, 0.0], [0.9, 0.0, 0.1]],  # class 1 exactly, then near class 0
            [[0.0, 0.0, 1.0], [5.0, 5.0, 0.0]],  # class 2 exactly, then between 0 and 1 (cos .71)
            [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]],
        ]
    )  # nothing close; the second is padding
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    single, labelled = label_free_targets(teacher, valid, classes, threshold=0.8)
    assert single.tolist() == [1, 2, -1] and labelled.tolist() == [True, True, False]
    multi, _ = label_free_targets(teacher, valid, classes, threshold=0.8, multilabel=True)
    assert multi.tolist() == [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]
    loose, _ = label_free_targets(teacher, valid, classes, threshold=0.7, multilabel=True)
    assert loose[1].tolist() == [1.0, 0.0, 1.0]  # the tie 0/1 goes to the first class


# -- the instance-level head ----------------------------------------------------------------------


def test_pair_geometry_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 10.0, 25.0, 20.0]])  # human 10x20, object 20x10
    g = pair_geometry(boxes)[0, 1]
    inter, union = 5 * 10, 200 + 200 - 50
    expected = [(15 - 5) / 10, (15 - 10) / 20, math.log(20 / 10), math.log(10 / 20), inter / union]
    assert np.allclose(g.numpy(), expected, atol=1e-6)
    assert torch.allclose(pair_geometry(boxes)[0, 0], torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]))
    assert torch.isfinite(pair_geometry(torch.zeros(3, 4))).all()


def test_pair_head_equals_the_concatenated_mlp_and_masks_pairs():
    torch.manual_seed(3)
    head = PairHead(node_dim=3, embed_dim=4, hidden=5)
    nodes, boxes = torch.randn(1, 2, 3, 3), torch.rand(1, 2, 3, 4) * 10
    boxes[..., 2:] += boxes[..., :2]
    valid = torch.tensor([[[True, True, True], [True, True, False]]])
    is_person = torch.tensor([[[True, False, False], [False, True, False]]])
    pairs, pair_valid = head(nodes, valid, is_person, boxes)
    assert pairs.shape == (1, 2 * 3 * 3, 4)
    first = torch.cat([head.human.weight, head.object.weight, head.geometry.weight], dim=1)
    geometry = pair_geometry(boxes)
    for t, i, j in [(0, 0, 1), (0, 0, 2), (1, 1, 0)]:
        x = torch.cat([nodes[0, t, i], nodes[0, t, j], geometry[0, t, i, j]])
        reference = head.out(first @ x + head.geometry.bias)
        assert torch.allclose(pairs[0, t * 9 + i * 3 + j], reference, atol=1e-5)
    assert not pairs[0, 2 * 3 + 2].any()  # not a pair: node 2 of frame 0 is no person
    # frame 0: person 0 with objects 1, 2; frame 1: person 1 with object 0 (slot 2 is padding)
    assert torch.nonzero(pair_valid[0]).flatten().tolist() == [1, 2, 9 + 3]
    scores = video_scores(pairs, pair_valid, torch.randn(2, 4))
    assert scores.shape == (1, 2) and torch.isfinite(scores).all()


def test_toy_label_free_training_beats_its_teacher_on_held_out_videos(tmp_path):
    """The whole label-free path: an import -> text embeddings -> teacher targets -> the pair head trained on
    I2T + T2I + soft relation only -> video scores against the true labels of new videos."""
    classes = ["kick ball", "pour water", "open door"]
    triplets = [["kick", "ball"], ["pour", "water"], ["open", "door"]]
    g = torch.Generator().manual_seed(0)
    b, t, k, d = 48, 2, 3, 6
    labels = torch.randint(0, 3, (b,), generator=g)
    teacher = labels.clone()
    wrong = torch.rand(b, generator=g) < 0.1
    teacher[wrong] = (labels[wrong] + 1) % 3  # the teacher is wrong on ~10 % of the videos
    (tmp_path / "vlm.jsonl").write_text(
        "".join(json.dumps({"video": f"v{i}", "triplets": [triplets[teacher[i]]]}) + "\n" for i in range(b))
    )
    encoder = TinyTextEncoder(dim=16)
    build_text_embeddings(tmp_path / "text.npz", tmp_path / "vlm.jsonl", encoder, class_names=classes)
    embeddings = load_text_embeddings(tmp_path / "text.npz", encoder.identity())
    texts = read_vlm_import(tmp_path / "vlm.jsonl")
    said = torch.from_numpy(
        np.stack([embeddings.lookup([pair_text(*texts[f"v{i}"].triplets[0])], "pair") for i in range(b)])
    )
    class_emb = torch.from_numpy(embeddings.lookup(classes, "class"))
    targets, labelled = label_free_targets(said, torch.ones(b, 1, dtype=torch.bool), class_emb, threshold=0.99)
    agreement = (targets == labels).float().mean().item()
    assert labelled.all() and 0.8 < agreement < 1.0

    def videos(classes_of):
        nodes = 0.5 * torch.randn(len(classes_of), t, k, d, generator=g)  # noise, and
        nodes[:, :, 1, :3] += 2 * F.one_hot(classes_of, 3).float()[:, None, :]  # the object node shows the class
        return nodes

    valid = torch.ones(b, t, k, dtype=torch.bool)
    is_person = torch.zeros(b, t, k, dtype=torch.bool)
    is_person[:, :, 0] = True
    boxes = torch.tensor([0.0, 0.0, 10.0, 10.0]).expand(b, t, k, 4).clone()
    torch.manual_seed(0)
    head = PairHead(d, 16, hidden=32)
    positive = F.one_hot(targets, 3).bool()
    objective = ContrastiveObjective(w_context=0.0, t_interaction=0.1, t_sr=0.1)
    train_nodes = videos(labels)
    no_text = torch.zeros(b, 16)

    def loss():
        pairs, pair_valid = head(train_nodes, valid, is_person, boxes)
        return objective(
            no_text, no_text, torch.zeros(b, dtype=torch.bool), pairs, pair_valid, class_emb, positive, ~positive
        )["total"].mean()

    descend(head.parameters(), loss, 100, 0.05)
    test_labels = torch.randint(0, 3, (4 * b,), generator=g)
    with torch.no_grad():
        pairs, pair_valid = head(
            videos(test_labels), valid.repeat(4, 1, 1), is_person.repeat(4, 1, 1), boxes.repeat(4, 1, 1, 1)
        )
        accuracy = (video_scores(pairs, pair_valid, class_emb).argmax(1) == test_labels).float().mean().item()
    assert accuracy > agreement
