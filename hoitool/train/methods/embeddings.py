"""A teacher run's node embeddings after the graph layers (``train.embeddings``): written, fingerprinted, refused when stale.

Layout, beside the run's ``outputs.npz`` (docs/method-anticipation.md)::

    RUN/embeddings.npz   video_ids (N,) str, view_index (N,) int64, embeddings (N, T*K, hidden) float16,
                         valid (N, T*K) bool -- every view of every train-split video, nodes frame-major
    RUN/embeddings.json  format hoitool.embeddings/1, split, checkpoint (path, sha256, epoch of best.pt),
                         features (path, fingerprint), npz_sha256, hoitool_version

Both are written atomically, the ``.json`` last. A reader (``distill --method anticipation``) refuses
(:class:`StaleArtifactError`, ``--force`` overrides) embeddings made from another ``best.pt`` or
another features store, or whose ``.npz`` changed since it was written: the checks of the teacher's
logits (:func:`hoitool.train.teacher.load_teacher_logits`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from hoitool import __version__, log, runs
from hoitool.errors import HoitoolError, StaleArtifactError, UsageError
from hoitool.io.atomic import atomic_path, write_json
from hoitool.io.digest import file_sha256

if TYPE_CHECKING:
    from hoitool.nn.models import ContextGraphNet
    from hoitool.train.loop import Member, Training

FORMAT = "hoitool.embeddings/1"
EMBEDDINGS_NPZ = "embeddings.npz"
EMBEDDINGS_JSON = "embeddings.json"
SPLIT = "train"  # what a student reads


def write_embeddings(training: Training, member: Member) -> Path:
    """Run ``best.pt`` over every view of the train split and write the node embeddings (rank 0)."""
    import torch

    from hoitool.nn.anticipation import forward_with_embeddings
    from hoitool.train.checkpoint import load_checkpoint
    from hoitool.train.data import VideoDataset, batches, make_loader
    from hoitool.train.distributed import unwrap

    best = load_checkpoint(runs.best_checkpoint(member.run_dir))
    model = training.method.build_model(best["model_config"], best["in_dim"], best["num_classes"])
    model.load_state_dict(best["model"])
    model = cast("ContextGraphNet", unwrap(model).to(training.ctx.device).eval())
    videos = training.videos[SPLIT]
    loader = make_loader(
        VideoDataset(training.reader, videos),
        training.config["data"]["workers"],
        False,
        training.config["train"]["seed"],
        batch_size=training.config["train"]["batch_size"],
        persistent=False,
    )
    ids, views, embeddings, valid = [], [], [], []
    with torch.no_grad():
        for batch in batches(loader):
            batch = training.method.inputs(training._to_device(batch), SPLIT)
            _, nodes, nodes_valid = forward_with_embeddings(
                model, batch["nodes"], batch["valid"], batch["boxes"], batch["frame_size"]
            )
            ids.append(np.asarray(videos.video_ids, dtype=object)[batch["index"].cpu().numpy()].astype(str))
            views.append(batch["view"].cpu().numpy())
            embeddings.append(nodes.float().cpu().numpy().astype(np.float16))
            valid.append(nodes_valid.cpu().numpy())
    path = Path(member.run_dir) / EMBEDDINGS_NPZ
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(
            handle,
            video_ids=np.concatenate(ids),
            view_index=np.concatenate(views).astype(np.int64),
            embeddings=_stack(embeddings, 0),
            valid=_stack(valid, False),
        )
    checkpoint = runs.best_checkpoint(member.run_dir)
    write_json(
        Path(member.run_dir) / EMBEDDINGS_JSON,
        {
            "format": FORMAT,
            "split": SPLIT,
            "checkpoint": {
                "path": str(checkpoint.relative_to(member.run_dir)),
                "sha256": file_sha256(checkpoint),
                "epoch": best["epoch"],
            },
            "features": {
                "path": str(Path(training.request.features).resolve()),
                "fingerprint": training.reader.fingerprint,
            },
            "npz_sha256": file_sha256(path),
            "hoitool_version": __version__,
        },
    )
    log.info(f"{member.run_dir}: node embeddings of {len(videos)} {SPLIT} videos ({EMBEDDINGS_NPZ})")
    return path


def _stack(parts: list[np.ndarray], fill) -> np.ndarray:
    """Concatenate batches whose node axis may differ (padding to the largest T*K)."""
    width = max(part.shape[1] for part in parts)
    padded = []
    for part in parts:
        if part.shape[1] < width:
            pad = [(0, 0), (0, width - part.shape[1])] + [(0, 0)] * (part.ndim - 2)
            part = np.pad(part, pad, constant_values=fill)
        padded.append(part)
    return np.concatenate(padded)


def load_teacher_embeddings(
    teacher_dir: Path, features_fingerprint: str, video_ids: list[str], views: int, force: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings (N, views, T*K, hidden) float32, valid (N, views, T*K))`` of the train videos, by id and view.

    Refused when missing (UsageError: how to make them) or stale (StaleArtifactError unless ``force``).
    """
    teacher_dir = Path(teacher_dir)
    npz, sidecar = teacher_dir / EMBEDDINGS_NPZ, teacher_dir / EMBEDDINGS_JSON
    if not npz.is_file() or not sidecar.is_file():
        raise UsageError(
            f"{teacher_dir}: the teacher run has no node embeddings ({EMBEDDINGS_NPZ}); train it with "
            "train-teacher --save-embeddings (config train.embeddings: true)"
        )
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except ValueError:
        info = None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise UsageError(f"{sidecar}: not hoitool's node-embeddings record (format {FORMAT})")
    problems = []
    if info.get("features", {}).get("fingerprint") != features_fingerprint:
        problems.append(
            f"made from features store {info.get('features', {}).get('fingerprint')} but the store is now {features_fingerprint}"
        )
    checkpoint = runs.best_checkpoint(teacher_dir)
    if not checkpoint.exists():
        problems.append(f"its checkpoint {checkpoint} is missing")
    elif info.get("checkpoint", {}).get("sha256") != file_sha256(checkpoint):
        problems.append(f"made from a different checkpoint than {checkpoint}")
    if info.get("npz_sha256") != file_sha256(npz):
        problems.append(f"{EMBEDDINGS_NPZ} changed since it was written")
    if problems:
        message = f"{sidecar}: stale teacher embeddings ({'; '.join(problems)})"
        if not force:
            raise StaleArtifactError(
                message + "; refresh the teacher (train-teacher --save-embeddings on this store) or use --force"
            )
        log.warning(f"{message}; used anyway (--force)")
    with np.load(npz, allow_pickle=False) as data:
        ids, view_index, embeddings, valid = (data[k] for k in ("video_ids", "view_index", "embeddings", "valid"))
    rows = {(str(video), int(view)): row for row, (video, view) in enumerate(zip(ids, view_index, strict=True))}
    table = np.zeros((len(video_ids), views, *embeddings.shape[1:]), dtype=np.float32)
    mask = np.zeros((len(video_ids), views, valid.shape[1]), dtype=bool)
    missing = []
    for position, video in enumerate(video_ids):
        for view in range(views):
            row = rows.get((video, view))
            if row is None:
                missing.append(f"{video} view {view}")
                continue
            table[position, view], mask[position, view] = embeddings[row], valid[row]
    if missing:
        raise HoitoolError(
            f"{npz}: no teacher embeddings for {missing[0]}"
            + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
        )
    return table, mask
