"""Region embeddings for CL-HOI's soft-relation pseudo-labels (hoitool.text.regions, hoitool text regions).

Checked by hand: the union box; the tiny image encoder's determinism; the pseudo-labels from given
region / verb / object vectors (softmax over the pairs, the best pair 1, the rest q / max q); the map
from a video's (frame, person, object) pairs to the pair head's rows; the CLIP pairing rule; and, on a
rendered synthetic set, the command end to end (a pair's row equals the encoder on the union crop of
the independently decoded frame), its refusals (stale, tampered, foreign) and training with it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import run_cli

from hoitool.errors import StaleArtifactError, UsageError
from hoitool.nn.contrastive import PairHead, dense_pair_targets, pair_geometry
from hoitool.text.image_encoders import TinyImageEncoder, load_image_encoder
from hoitool.text.regions import check_same_clip, region_pseudo_labels, union_boxes


def test_union_box_of_each_person_object_pair_by_hand():
    boxes = np.array([[[0, 0, 10, 10], [5, 2, 20, 8], [30, 30, 40, 50]]], np.float32)  # (T=1, K=3, 4)
    valid = np.array([[True, True, True]])
    person = np.array([[True, False, False]])
    union, pair_valid = union_boxes(boxes, valid, person)
    assert union.shape == (1, 9, 4) and pair_valid.shape == (1, 9)
    assert np.flatnonzero(pair_valid[0]).tolist() == [1, 2]  # (person 0, object 1), (person 0, object 2)
    assert union[0, 1].tolist() == [0, 0, 20, 10]
    assert union[0, 2].tolist() == [0, 0, 40, 50]
    valid[0, 2] = False  # an invalid object forms no pair
    assert np.flatnonzero(union_boxes(boxes, valid, person)[1][0]).tolist() == [1]


def test_tiny_image_encoder_is_deterministic_and_seeded():
    crops = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    one, two = TinyImageEncoder(8), load_image_encoder("tiny:8")
    a, b = one.embed_crops(crops), two.embed_crops(crops)
    assert a.shape == (5, 8) and torch.equal(a, b)
    assert torch.allclose(a.norm(dim=1), torch.ones(5))
    assert not torch.allclose(a, TinyImageEncoder(8, seed=1).embed_crops(crops))
    assert one.identity() == {"kind": "tiny", "dim": 8, "seed": 0, "size": 32}
    with pytest.raises(UsageError, match="unknown image encoder"):
        load_image_encoder("resnet:8")
    with pytest.raises(UsageError, match="does not exist"):
        load_image_encoder("hf:/nowhere/clip")


def test_real_image_encoders_need_their_optional_package_and_local_files(tmp_path):
    import importlib.util

    weights = tmp_path / "clip.pt"
    weights.write_bytes(b"")
    for spec, module, package in (
        (f"open_clip:ViT-B-32:{weights}", "open_clip", "open_clip_torch"),
        (f"hf:{tmp_path}", "transformers", "transformers"),
    ):
        if importlib.util.find_spec(module) is not None:
            with pytest.raises(UsageError, match="could not load"):  # an empty file / directory is no CLIP
                load_image_encoder(spec)
        else:
            with pytest.raises(UsageError, match=f"image encoder needs the optional package {package!r}"):
                load_image_encoder(spec)


def test_pseudo_labels_from_region_verb_and_object_embeddings_by_hand():
    regions = np.array([[1, 0], [0, 1], [1, 1]], np.float32)  # 3 pairs of view 0
    pairs = np.array([[0, 0, 0, 1], [0, 0, 0, 2], [0, 1, 0, 1]])
    verbs = np.array([[1, 0], [0, 1]], np.float32)  # 2 positives
    objects = np.array([[1, 0], [0, 0]], np.float32)
    object_valid = np.array([True, False])  # the second triplet names no object
    labels = region_pseudo_labels(pairs, regions, verbs, objects, object_valid, temperature=0.5)
    (view_pairs, y), r = labels[0], 1 / np.sqrt(2)
    assert view_pairs.tolist() == [[0, 0, 1], [0, 0, 2], [1, 0, 1]]
    # s = cos(region, verb), averaged with cos(region, object) where there is one
    s = np.array([[0.5 * (1 + 1), 0], [0.5 * (0 + 0), 1], [0.5 * (r + r), r]])
    q = np.exp(s / 0.5) / np.exp(s / 0.5).sum(axis=0)
    np.testing.assert_allclose(y, q / q.max(axis=0), rtol=1e-5)
    assert y[0, 0] == 1 and y[1, 1] == 1  # the best pair of each interaction gets 1


def test_a_videos_pairs_land_on_the_pair_heads_rows_for_any_batch_padding():
    torch.manual_seed(0)
    frames, slots, dim = 3, 4, 6
    boxes = torch.rand(frames, slots, 4) * 20
    boxes[..., 2:] += boxes[..., :2] + 1
    valid = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 1, 1]], dtype=torch.bool)
    person = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 0, 1]], dtype=torch.bool)
    _, pair_valid = union_boxes(boxes.numpy(), valid.numpy(), person.numpy())
    t, m = np.nonzero(pair_valid)
    pairs = torch.from_numpy(np.stack([t, m // slots, m % slots], axis=1))  # (frame, person, object)
    head = PairHead(dim, 5, hidden=7)
    nodes = torch.randn(frames, slots, dim)
    for padded_frames, padded_slots in ((frames, slots), (frames + 2, slots + 3)):  # batch padding
        x = torch.zeros(1, padded_frames, padded_slots, dim)
        x[0, :frames, :slots] = nodes
        v = torch.zeros(1, padded_frames, padded_slots, dtype=torch.bool)
        v[0, :frames, :slots] = valid
        p = torch.zeros_like(v)
        p[0, :frames, :slots] = person
        b = torch.zeros(1, padded_frames, padded_slots, 4)
        b[0, :frames, :slots] = boxes
        out, out_valid = head(x, v, p, b)
        targets = torch.arange(1, len(pairs) + 1, dtype=torch.float32)[:, None]
        dense = dense_pair_targets([(pairs, torch.tensor([2]), targets)], padded_frames, padded_slots, 3)
        rows = torch.nonzero(dense[0, :, 2]).flatten()
        assert torch.equal(rows, torch.nonzero(out_valid[0]).flatten())  # exactly the head's valid pairs
        assert dense[0, :, :2].abs().sum() == 0
        for k, (frame, i, j) in enumerate(pairs.tolist()):  # the row is that pair's embedding, by hand
            row = int(rows[k])
            assert dense[0, row, 2] == k + 1
            geometry = pair_geometry(boxes[frame])[i, j]
            hand = head.out(head.human(nodes[frame, i]) + head.object(nodes[frame, j]) + head.geometry(geometry))
            torch.testing.assert_close(out[0, row], hand)


def test_text_and_image_encoders_must_be_one_clip():
    clip = {"kind": "open_clip", "model": "ViT-B-32", "weights_sha256": "a"}
    check_same_clip(clip, dict(clip), 512, 512)
    check_same_clip({"kind": "tiny", "dim": 16}, {"kind": "tiny", "dim": 16}, 16, 16)  # tests only
    with pytest.raises(UsageError, match="not the same CLIP"):
        check_same_clip(clip, dict(clip, weights_sha256="b"), 512, 512)
    with pytest.raises(UsageError, match="not the same CLIP"):
        check_same_clip(clip, {"kind": "hf", "files": {}}, 512, 512)
    with pytest.raises(UsageError, match="a tiny encoder is random"):
        check_same_clip({"kind": "tiny"}, clip, 512, 512)
    with pytest.raises(UsageError, match="512-dimensional but the text encoder gives 16"):
        check_same_clip({"kind": "tiny"}, {"kind": "tiny"}, 16, 512)


# -- the command on a rendered synthetic set -------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A rendered synthetic set (1 video per class, 6 frames), dataset boxes, crop features with mirrored views."""
    from helpers import rendered_crop_features

    return rendered_crop_features(tmp_path_factory.mktemp("regions"), flip=True)


def test_text_regions_embeds_every_pairs_union_crop(rendered, tmp_path, capsys):
    from torchvision.ops import roi_align

    from hoitool.features.transforms import prepare_frames
    from hoitool.manifest import Manifest
    from hoitool.store import open_store
    from hoitool.text.regions import load_region_embeddings
    from hoitool.video.reader import read_frames

    out = tmp_path / "regions.npz"
    code, _, err = run_cli(
        ["text", "regions", rendered / "features.h5", "--image-encoder", "tiny:16", "--out", out], capsys
    )
    assert code == 0, err
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["format"] == "hoitool.region-embeddings/1" and info["views"] == 2 and info["dim"] == 16
    regions, _ = load_region_embeddings(out, open_store(rendered / "features.h5").fingerprint)
    store, boxes = open_store(rendered / "features.h5"), open_store(rendered / "boxes.h5")
    manifest = Manifest.load(rendered / "data" / "manifest.json")
    encoder = TinyImageEncoder(16)
    total = 0
    for video in store.video_ids:
        pairs, rows = regions.read(video)
        arrays, person = store.read(video), boxes.read(video)["is_person"][0]
        for view in range(2):
            v = arrays["valid"][view]
            expected = (v & person)[:, :, None] & (v & ~person)[:, None, :]
            assert int((pairs[:, 0] == view).sum()) == int(expected.sum())
        total += len(pairs)
        assert rows.dtype == np.float32 and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-2)
    assert total == info["counts"]["pairs"] > 0
    # one pair of view 0 by hand: decode its frame, union box, crop, encode
    video = store.video_ids[0]
    pairs, rows = regions.read(video)
    view, frame, i, j = pairs[0].tolist()
    assert view == 0
    arrays = store.read(video)
    b = arrays["boxes"][0, frame]
    union = [min(b[i, 0], b[j, 0]), min(b[i, 1], b[j, 1]), max(b[i, 2], b[j, 2]), max(b[i, 3], b[j, 3])]
    entry = manifest.by_id()[video]
    image = read_frames(manifest.source_path(entry), entry.kind, arrays["frame_indices"][0][[frame]])
    source, _ = prepare_frames(image, None, mean=encoder.mean, std=encoder.std)
    crop = roi_align(source, torch.tensor([[0.0, *union]]), 32, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    hand = encoder.embed_crops(crop)[0].numpy()
    np.testing.assert_allclose(rows[0], hand, atol=2e-3)  # float16 storage
    # the same command again keeps the build
    code, out_text, err = run_cli(
        ["text", "regions", rendered / "features.h5", "--image-encoder", "tiny:16", "--out", out], capsys
    )
    assert code == 0 and "kept" in out_text + err


def test_region_embeddings_refused_when_stale_tampered_or_foreign(rendered, tmp_path, capsys):
    from hoitool.text.regions import load_region_embeddings

    out = tmp_path / "regions.npz"
    args = ["text", "regions", rendered / "features.h5", "--image-encoder", "tiny:8", "--out", out]
    assert run_cli(args, capsys)[0] == 0
    with pytest.raises(StaleArtifactError, match="made from another features store"):
        load_region_embeddings(out, "0" * 64)
    out.write_bytes(out.read_bytes() + b"\0")
    with pytest.raises(StaleArtifactError, match="changed since it was written"):
        load_region_embeddings(out)
    load_region_embeddings(out, force=True)  # force reads it anyway
    foreign = tmp_path / "mine.npz"
    foreign.write_bytes(b"not ours")
    code, _, err = run_cli([*args[:-1], foreign], capsys)
    assert code == 2 and "is not hoitool's region embeddings" in err and foreign.read_bytes() == b"not ours"


def test_cl_hoi_trains_on_region_pseudo_labels(rendered, tmp_path, capsys):
    regions = tmp_path / "regions.npz"
    args = ["text", "regions", rendered / "features.h5", "--image-encoder", "tiny:16", "--out", regions]
    assert run_cli([*args, "--split", "train"], capsys)[0] == 0
    vlm = tmp_path / "vlm.jsonl"
    assert run_cli(["text", "simulate", rendered / "data" / "manifest.json", "--out", vlm], capsys)[0] == 0
    common = ["--view", "local", "--method", "cl_hoi", "--vlm-import", vlm, "--epochs", "1", "--workers", "0"]
    common += ["--device", "cpu", "--set", "model.hidden=8"]
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["train-teacher", rendered / "features.h5", "--out", out, *common, "--text-encoder", "tiny:16",
         "--region-embeddings", regions],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "soft-relation pseudo-labels: from the region embeddings" in err
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["loss_sr"] > 0
    assert any(
        key.startswith("region embeddings")
        for key in json.loads((out / "run.json").read_text())["method"]["fingerprints"]
    )
    regions_bytes = regions.read_bytes()
    regions.write_bytes(regions_bytes + b"\0")  # the region embeddings changed: refused before any work
    code, _, err = run_cli(
        ["train-teacher", rendered / "features.h5", "--out", out, *common, "--text-encoder", "tiny:16",
         "--region-embeddings", regions, "--epochs", "2", "--resume"],
        capsys,
    )  # fmt: skip
    assert code != 0 and f"{regions}: changed since it was written" in err
    regions.write_bytes(regions_bytes)
    code, _, err = run_cli(
        ["train-teacher", rendered / "features.h5", "--out", tmp_path / "other", *common, "--text-encoder", "tiny:8",
         "--region-embeddings", regions],
        capsys,
    )  # fmt: skip
    assert code == 2 and "16-dimensional but the text encoder gives 8" in err and not (tmp_path / "other").exists()
    code, _, err = run_cli(
        ["train-teacher", rendered / "features.h5", "--out", tmp_path / "plain", *common, "--text-encoder", "tiny:16"],
        capsys,
    )  # fmt: skip
    assert code == 0 and "soft-relation pseudo-labels: image-level (no --region-embeddings)" in err
    glidn = ["train-teacher", rendered / "features.h5", "--view", "local", "--out", tmp_path / "glidn"]
    code, _, err = run_cli([*glidn, "--region-embeddings", regions, "--device", "cpu"], capsys)
    assert code == 2 and "cl_hoi.regions is a setting of --method cl_hoi" in err  # never silently ignored
