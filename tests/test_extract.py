"""Extraction end to end through the CLI: boxes -> features, failures, shards, upstream checks, backends."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from hoitool.store import open_store

FEATURE_ARGS = [
    "--backbone",
    "resnet18",
    "--weights",
    "random",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--set",
    "short_side=64",
]


def hoitool(*args, check=None, env=None):
    command = [sys.executable, "-m", "hoitool", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from hoitool.datasets.synthetic import generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(root / "data", videos_per_class=1, num_frames=8, size=64, seed=3)
    hoitool(
        "extract",
        "boxes",
        root / "data",
        "--out",
        root / "boxes.h5",
        "--source",
        "dataset",
        "--frames",
        4,
        "--top-k",
        4,
        "--workers",
        0,
        check=0,
    )
    return root


def assert_same_store(a, b):
    first, second = open_store(a), open_store(b)
    assert first.video_ids == second.video_ids and first.fingerprint == second.fingerprint
    for video_id in first.video_ids:
        left, right = first.read(video_id), second.read(video_id)
        assert left.keys() == right.keys()
        for name in left:
            np.testing.assert_array_equal(left[name], right[name], err_msg=f"{video_id}/{name}")


def test_dataset_boxes_store(dataset):
    boxes = open_store(dataset / "boxes.h5")
    assert boxes.kind == "boxes" and len(boxes.video_ids) >= 6
    arrays = boxes.read(boxes.video_ids[0])
    assert arrays["boxes"].shape == (1, 4, 4, 4) and arrays["valid"].any()
    assert arrays["is_person"][arrays["valid"]].any()
    assert (dataset / "boxes.h5.config.yaml").exists()


def test_imported_boxes_equal_dataset_boxes(dataset, tmp_path):
    hoitool(
        "extract",
        "boxes",
        dataset / "data",
        "--out",
        tmp_path / "imported.zarr",
        "--source",
        "import",
        "--import",
        dataset / "data" / "annotations.jsonl",
        "--frames",
        4,
        "--top-k",
        4,
        "--workers",
        0,
        check=0,
    )
    imported, own = open_store(tmp_path / "imported.zarr"), open_store(dataset / "boxes.h5")
    assert imported.video_ids == own.video_ids
    for name in ("boxes", "valid", "is_person", "labels", "frame_indices"):
        np.testing.assert_array_equal(imported.read(own.video_ids[0])[name], own.read(own.video_ids[0])[name])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "x", "frame": 0, "boxes": [[5, 5, 1, 1]]}\n')
    result = hoitool(
        "extract",
        "boxes",
        dataset / "data",
        "--out",
        tmp_path / "bad.h5",
        "--source",
        "import",
        "--import",
        bad,
        "--workers",
        0,
        check=3,
    )
    assert "bad.jsonl:1" in result.stderr and "Traceback" not in result.stderr


def test_rpn_proposals_with_random_weights(dataset, tmp_path):
    hoitool(
        "extract",
        "boxes",
        dataset / "data",
        "--out",
        tmp_path / "rpn.h5",
        "--source",
        "rpn",
        "--weights",
        "random",
        "--frames",
        2,
        "--top-k",
        5,
        "--device",
        "cpu",
        "--workers",
        0,
        "--set",
        "model.min_size=64",
        "--set",
        "model.max_size=96",
        check=0,
    )
    store = open_store(tmp_path / "rpn.h5")
    arrays = store.read(store.video_ids[0])
    assert arrays["boxes"].shape == (1, 2, 5, 4) and (arrays["labels"] == -1).all()
    height, width = arrays["frame_size"]
    boxes = arrays["boxes"][arrays["valid"]]
    assert (boxes[:, 2] <= width + 1e-3).all() and (boxes[:, 3] <= height + 1e-3).all()
    assert store.provenance["weights"]["box_model"].startswith("rpn:fasterrcnn_resnet50_fpn:")
    assert store.provenance["config"]["model"]["weights"] == "random"


def test_missing_weights_say_how_to_fetch_them(dataset, tmp_path, monkeypatch):
    import os

    env = dict(os.environ, TORCH_HOME=str(tmp_path / "empty-cache"))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hoitool",
            "extract",
            "boxes",
            str(dataset / "data"),
            "--out",
            str(tmp_path / "b.h5"),
            "--source",
            "rpn",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "not found" in result.stderr and "--weights" in result.stderr


def test_features_hdf5_and_zarr_identical_and_equal_to_direct_roi_align(dataset, tmp_path):
    hoitool("extract", "features", dataset / "boxes.h5", "--out", tmp_path / "f.h5", *FEATURE_ARGS, check=0)
    hoitool("extract", "features", dataset / "boxes.h5", "--out", tmp_path / "f.zarr", *FEATURE_ARGS, check=0)
    assert_same_store(tmp_path / "f.h5", tmp_path / "f.zarr")

    from torchvision.ops import roi_align

    from hoitool.features.backbones import build_backbone
    from hoitool.features.transforms import prepare_frames
    from hoitool.manifest import Manifest
    from hoitool.video.reader import read_frames

    store = open_store(tmp_path / "f.h5")
    video_id = store.video_ids[0]
    stored = store.read(video_id)
    manifest = Manifest.load(dataset / "data")
    video = manifest.by_id()[video_id]
    frames = read_frames(manifest.source_path(video), video.kind, stored["frame_indices"][0])
    backbone = build_backbone("resnet18", None, "random", seed=0)
    images, transform = prepare_frames(frames, 64, mean=backbone.mean, std=backbone.std)
    fmap = backbone.feature_map(images)
    image_boxes, _ = transform.to_image(torch.from_numpy(stored["boxes"][0]))
    valid = stored["valid"][0]
    for t, k in zip(*np.nonzero(valid), strict=False):
        roi = torch.cat([torch.tensor([[t]], dtype=torch.float32), image_boxes[t, k][None]], dim=1)
        direct = roi_align(fmap, roi, 7, spatial_scale=1 / backbone.stride, sampling_ratio=2, aligned=True)
        expected = direct.amax(dim=(-2, -1))[0].numpy().astype(np.float16)
        np.testing.assert_allclose(
            stored["nodes"][0, t, k].astype(np.float32), expected.astype(np.float32), rtol=2e-3, atol=2e-3
        )
    assert not stored["nodes"][0][~valid].any()


def test_bad_videos_are_recorded_and_the_rest_done(dataset, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(dataset / "data", data)
    manifest = json.loads((data / "manifest.json").read_text())
    videos = manifest["videos"]
    corrupt, truncated, no_boxes, no_annotation = videos[0], videos[1], videos[2], videos[3]
    (data / corrupt["source"]).write_bytes(b"\x00not a video" * 100)
    source = data / truncated["source"]
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 3])
    lines = [json.loads(line) for line in (data / "annotations.jsonl").read_text().splitlines()]
    kept = []
    for record in lines:
        if record["video"] == no_annotation["id"]:
            continue
        if record["video"] == no_boxes["id"]:
            record = {**record, "boxes": [], "scores": [], "labels": [], "is_person": []}
        kept.append(record)
    (data / "annotations.jsonl").write_text("".join(json.dumps(record) + "\n" for record in kept))
    (data / "manifest.json").write_text(json.dumps(manifest))

    result = hoitool(
        "extract",
        "boxes",
        data,
        "--out",
        tmp_path / "boxes.h5",
        "--source",
        "dataset",
        "--frames",
        4,
        "--top-k",
        4,
        "--workers",
        0,
        check=3,
    )
    assert "4 videos failed" in result.stderr and "Traceback" not in result.stderr
    failures = {
        json.loads(line)["video"]: json.loads(line)["error"]
        for line in (tmp_path / "boxes.h5.failures.jsonl").read_text().splitlines()
    }
    assert set(failures) == {corrupt["id"], truncated["id"], no_boxes["id"], no_annotation["id"]}
    assert "no boxes" in failures[no_boxes["id"]] and "no boxes for video" in failures[no_annotation["id"]]
    assert corrupt["source"].split("/")[-1] in failures[corrupt["id"]]
    done = open_store(tmp_path / "boxes.h5").video_ids
    assert len(done) == len(videos) - 4

    # the truncated video decodes its first frames but not the late ones: features fail for it only if sampled
    result = hoitool("extract", "features", tmp_path / "boxes.h5", "--out", tmp_path / "f.h5", *FEATURE_ARGS)
    assert result.returncode == 0, result.stderr
    assert open_store(tmp_path / "f.h5").video_ids == done


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_two_concurrent_shards_merged_equal_one_run(dataset, tmp_path, suffix):
    out = tmp_path / f"f{suffix}"
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hoitool",
                "--quiet",
                "extract",
                "features",
                str(dataset / "boxes.h5"),
                "--out",
                str(out),
                "--shard",
                f"{i}/2",
                *FEATURE_ARGS,
            ]
        )
        for i in range(2)
    ]
    assert [child.wait() for child in children] == [0, 0]
    shards = [tmp_path / f"f.shard0-of-2{suffix}", tmp_path / f"f.shard1-of-2{suffix}"]
    assert all(len(open_store(shard).video_ids) > 0 for shard in shards)
    hoitool("cache", "merge", *shards, "--out", tmp_path / f"merged{suffix}", check=0)
    hoitool("extract", "features", dataset / "boxes.h5", "--out", tmp_path / f"one{suffix}", *FEATURE_ARGS, check=0)
    assert_same_store(tmp_path / f"one{suffix}", tmp_path / f"merged{suffix}")


def test_changed_upstream_store_is_refused(dataset, tmp_path):
    boxes = tmp_path / "boxes.h5"
    shutil.copytree(dataset / "boxes.h5", boxes)  # a store is a folder (schema 2)
    out = tmp_path / "f.h5"
    hoitool("extract", "features", boxes, "--out", out, *FEATURE_ARGS, check=0)
    hoitool(
        "extract",
        "boxes",
        dataset / "data",
        "--out",
        boxes,
        "--source",
        "dataset",
        "--frames",
        4,
        "--top-k",
        2,
        "--workers",
        0,
        "--force",
        check=0,
    )
    result = hoitool("extract", "features", boxes, "--out", out, *FEATURE_ARGS, check=1)
    assert "upstream artifact changed" in result.stderr and "--force" in result.stderr
    assert result.stderr.count("\n") <= 2
    hoitool("extract", "features", boxes, "--out", out, *FEATURE_ARGS, "--force", check=0)


def test_rerun_of_a_finished_store_is_a_no_op(dataset, tmp_path):
    out = tmp_path / "f.h5"
    hoitool("extract", "features", dataset / "boxes.h5", "--out", out, *FEATURE_ARGS, check=0)
    before = open_store(out).fingerprint
    result = hoitool("extract", "features", dataset / "boxes.h5", "--out", out, *FEATURE_ARGS, check=0)
    assert "already done" in result.stderr
    assert open_store(out).fingerprint == before


def test_cache_info_and_verify(dataset, tmp_path):
    hoitool("extract", "features", dataset / "boxes.h5", "--out", tmp_path / "f.zarr", *FEATURE_ARGS, check=0)
    info = json.loads(hoitool("cache", "info", tmp_path / "f.zarr", "--json", check=0).stdout)
    assert info["kind"] == "features" and info["videos_done"] == len(open_store(dataset / "boxes.h5").video_ids)
    assert info["dtypes"]["nodes"] == "float16" and info["provenance"]["weights"]["backbone"].startswith("resnet18")
    assert "fingerprint" in hoitool("cache", "info", tmp_path / "f.zarr", check=0).stdout
    hoitool("cache", "verify", tmp_path / "f.zarr", check=0)
    result = hoitool("cache", "info", tmp_path / "missing.h5", check=2)
    assert "not found" in result.stderr


def staged_so_far(parts) -> int:
    """Videos a run has staged: its npz parts plus the videos of its finished checkpoint segments."""
    in_segments = sum(len(json.loads(meta.read_text())["videos"]["id"]) for meta in parts.glob("seg-*.json"))
    return len(list(parts.glob("*.npz"))) + in_segments


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_kill_at_random_points_then_resume_equals_uninterrupted_run(dataset, tmp_path, suffix):
    """SIGTERM / kill -9 after a random number of finished videos plus a random delay, several times, then resume.

    The killed runs write a checkpoint segment every 2 videos (HOITOOL_CHECKPOINT_BYTES), so kills also land
    while a checkpoint segment is written or its parts removed; the reference run writes none.
    The kill points follow the staged count, not the clock: with a longer random delay the 6 tiny videos were
    all done before the kill on an idle machine (seen in CI), and no kill landed inside the run.
    """
    import os
    import random
    import signal
    import time

    hoitool("extract", "features", dataset / "boxes.h5", "--out", tmp_path / f"ref{suffix}", *FEATURE_ARGS, check=0)
    total = len(open_store(dataset / "boxes.h5").video_ids)
    env = dict(os.environ, HOITOOL_CHECKPOINT_BYTES="30000")  # a part here is ~18 KB: a checkpoint per 2 videos
    rng = random.Random(suffix)
    interrupted, checkpointed = 0, 0
    for attempt in range(3):
        out = tmp_path / f"killed{attempt}{suffix}"
        parts = out.with_name(out.name + ".parts")
        for _ in range(2):
            child = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hoitool",
                    "--quiet",
                    "extract",
                    "features",
                    str(dataset / "boxes.h5"),
                    "--out",
                    str(out),
                    *FEATURE_ARGS,
                ],
                stderr=subprocess.DEVNULL,
                env=env,
            )
            graceful = attempt == 0  # SIGTERM (e.g. SLURM pre-emption): exit 130, finished videos kept
            already = staged_so_far(parts)
            wanted = already + 1 if graceful else rng.randint(2, total - 2)  # at least one checkpoint's worth staged
            while child.poll() is None and staged_so_far(parts) < wanted:
                time.sleep(0.01)
            time.sleep(0 if graceful else rng.uniform(0, 0.05))  # short: on a quiet machine 6 videos take ~0.2 s
            if child.poll() is None:
                child.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
                interrupted += 1
                assert child.wait() == (130 if graceful else -signal.SIGKILL)
            child.wait()
            checkpointed += bool(list(parts.glob("seg-*")))
        hoitool("extract", "features", dataset / "boxes.h5", "--out", out, *FEATURE_ARGS, check=0, env=env)
        assert_same_store(tmp_path / f"ref{suffix}", out)
        assert not parts.exists()
    assert interrupted >= 3, "the kills must land while extraction is running"
    assert checkpointed >= 3, "the killed runs must have left checkpoint segments"
