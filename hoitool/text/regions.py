"""Region embeddings for CL-HOI's soft-relation pseudo-labels (A.3): every human-object union box, in the text space.

The paper crops the union box of each detected (human, object) pair and encodes it with the CLIP
**vision** tower whose text tower embeds the verbs and objects; the similarities become the
pseudo-labels of :func:`hoitool.nn.contrastive.soft_relation_targets`. Here, for each video of a
features store and each of its views, the sampled frames (the store's ``frame_indices``) are decoded
as extraction decodes them (:class:`hoitool.extract.features.FramesLoader`), every (valid person,
valid non-person) slot pair of a frame (``is_person`` from the boxes store the features store records
as its upstream) gets its union box, cropped at source resolution and embedded
(:func:`hoitool.features.nodes.crop_node_features`) by an image encoder (:mod:`hoitool.text.image_encoders`).

Layout (docs/method-cl-hoi.md#region-embeddings)::

    OUT.npz   videos (N,) str; per video n: p<n> (P, 4) int16 (view, frame, person slot, object slot),
              e<n> (P, d) float16 unit rows, in PairHead's order (view, frame, person, object)
    OUT.json  format hoitool.region-embeddings/1, fingerprint, inputs (features and boxes stores:
              path + fingerprint), encoder identity, dim, counts, npz_sha256, hoitool_version

Written atomically (the ``.npz`` member by member, so memory stays one video), the ``.json`` last;
read back video by video. :func:`load_region_embeddings` raises :class:`StaleArtifactError` when the
features store or the ``.npz`` changed; a path holding anything not ours is refused, never replaced.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, cast

import numpy as np

from hoitool import __version__, log
from hoitool.errors import StaleArtifactError, UsageError
from hoitool.io.atomic import atomic_path, write_json
from hoitool.io.digest import file_sha256
from hoitool.text.cache import _read_sidecar, _sidecar, check_ours

FORMAT = "hoitool.region-embeddings/1"
WHAT = "region embeddings"


def person_masks(
    boxes_path: Path, fingerprint: str | None, video_ids: list[str], views: int, force: bool
) -> np.ndarray:
    """``is_person (N, views, T, K)`` of the videos from the boxes store (a view reads its clip's boxes)."""
    from hoitool.store import open_store

    reader = open_store(boxes_path)
    if reader.kind != "boxes":
        raise UsageError(f"{boxes_path}: is a {reader.kind} store, expected the boxes store (cl_hoi.boxes)")
    if fingerprint is not None:
        check_boxes_unchanged(reader, boxes_path, fingerprint, force, "is_person would not match the nodes")
    rows = []
    for video in video_ids:
        if video not in reader.video_ids:
            raise UsageError(f"{boxes_path}: holds no boxes of video {video!r} (cl_hoi.boxes)")
        person = reader.read(video, ["is_person"])["is_person"]  # (C, T, K)
        clips = person.shape[0]
        rows.append(np.stack([person[view * clips // views] for view in range(views)]))
    reader.close()
    return np.stack(rows) if rows else np.zeros((0, views, 0, 0), bool)


def check_boxes_unchanged(reader, boxes_path, expected: str | None, force: bool, consequence: str) -> None:
    """Refuse (StaleArtifactError) a boxes store whose fingerprint is not the one the features were extracted
    from, saying ``consequence``; with ``force`` warn and go on."""
    if reader.fingerprint == expected:
        return
    message = f"{boxes_path}: the boxes store changed since the features were extracted from it"
    if not force:
        raise StaleArtifactError(message + f" ({consequence}); use --force to use it anyway")
    log.warning(message + "; used anyway (--force)")


def union_boxes(boxes, valid, is_person) -> tuple[np.ndarray, np.ndarray]:
    """xyxy boxes (T, K, 4), valid/is_person (T, K) -> union boxes (T, K*K, 4) and pair mask (T, K*K).

    Pair ``i * K + j`` of frame ``t`` is (person slot ``i``, object slot ``j``), the order of
    :class:`hoitool.nn.contrastive.PairHead`; it is valid when ``i`` is a valid person and ``j`` a valid
    non-person. The union is the smallest box holding both: ``(min x1, min y1, max x2, max y2)``.
    """
    boxes = np.asarray(boxes, dtype=np.float32)
    valid, is_person = np.asarray(valid, bool), np.asarray(is_person, bool)
    human, other = boxes[:, :, None, :], boxes[:, None, :, :]
    union = np.concatenate(
        [np.minimum(human[..., :2], other[..., :2]), np.maximum(human[..., 2:], other[..., 2:])], axis=-1
    )
    pair_valid = (valid & is_person)[:, :, None] & (valid & ~is_person)[:, None, :]
    frames, slots = valid.shape
    return union.reshape(frames, slots * slots, 4), pair_valid.reshape(frames, slots * slots)


def _fingerprint(inputs: dict, encoder: dict) -> str:
    blob = json.dumps({"inputs": {k: v["fingerprint"] for k, v in inputs.items()}, "encoder": encoder}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _view_flips(provenance: dict, views: int, clips: int) -> list[tuple[int, bool]]:
    """Per view, (clip, mirrored): views are clips x flips x crops in that order (hoitool.extract.features)."""
    config = provenance.get("config") or {}
    flips = 2 if config.get("flip") else 1
    crops = int(config.get("crops") or 1)
    if views != clips * flips * crops:
        raise UsageError(f"features store: {views} views, but {clips} clips x {flips} flips x {crops} crops")
    return [((view // crops) // flips, (view // crops) % flips == 1) for view in range(views)]


def _video_regions(item: dict, arrays: dict, flips: list[tuple[int, bool]], encoder) -> tuple[np.ndarray, np.ndarray]:
    """One video's pairs ``(P, 4)`` (view, frame, person, object) and their union-crop embeddings ``(P, d)``."""
    import torch

    from hoitool.features.backbones import Backbone
    from hoitool.features.nodes import crop_node_features
    from hoitool.features.transforms import prepare_frames

    indices, rows = [], []
    for view, (clip, mirrored) in enumerate(flips):
        union, pair_valid = union_boxes(arrays["boxes"][view], arrays["valid"][view], item["is_person"][clip])
        frames_with = np.flatnonzero(pair_valid.any(axis=1))
        if not frames_with.size:
            continue
        frames = item["frames"][item["frame_slot"][clip][frames_with]]
        if mirrored:  # the store's boxes of a mirrored view lie on the mirrored frame
            frames = np.ascontiguousarray(frames[:, :, ::-1])
        source, _ = prepare_frames(frames, None, mean=encoder.mean, std=encoder.std, device=encoder.device)
        # an image encoder has what crop_node_features reads of a Backbone (kind, arch, device, dim, embed_crops)
        embedded = crop_node_features(
            source, union[frames_with], pair_valid[frames_with], cast(Backbone, encoder), crop_size=encoder.size
        )
        t, m = np.nonzero(pair_valid[frames_with])
        slots = arrays["valid"].shape[-1]
        indices.append(np.stack([np.full_like(t, view), frames_with[t], m // slots, m % slots], axis=1))
        rows.append(embedded[torch.as_tensor(t), torch.as_tensor(m)].float().cpu().numpy())
    if not indices:
        return np.zeros((0, 4), np.int16), np.zeros((0, encoder.dim), np.float16)
    chosen = np.concatenate(rows)
    chosen /= np.maximum(np.linalg.norm(chosen, axis=1, keepdims=True), 1e-12)
    return np.concatenate(indices).astype(np.int16), chosen.astype(np.float16)


def _write_member(archive: zipfile.ZipFile, name: str, array: np.ndarray) -> None:
    with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
        np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)


def build_region_embeddings(
    features_path: Path | str,
    out: Path | str,
    encoder,
    splits: list[str] | None = None,
    force: bool = False,
) -> dict:
    """Embed the union box of every (person, object) pair of every view of the features store's videos.

    ``splits`` limits the videos to those splits of the manifest (default: every video of the store).
    A current build (same fingerprint, intact ``.npz``) is kept as it is; an older build of ours is
    replaced. The boxes store the features were extracted from must be unchanged (``force``: used anyway).
    ``encoder`` is an image encoder (:mod:`hoitool.text.image_encoders`) or a function returning one,
    called once the inputs passed their checks (a CLIP loads only for a build that can start).
    Returns the sidecar's content (with ``"reused": True/False``).
    """
    from hoitool.extract.features import FramesLoader
    from hoitool.manifest import Manifest
    from hoitool.store import open_store

    out, features_path = Path(out), Path(features_path)
    previous = check_ours(out, FORMAT, WHAT)
    reader = open_store(features_path)
    if reader.kind != "features":
        raise UsageError(f"{features_path}: is a {reader.kind} store, expected a features store")
    upstream = reader.provenance.get("upstream") or {}
    boxes_path = upstream.get("boxes_path")
    if not boxes_path or not Path(boxes_path).exists():
        raise UsageError(f"{features_path}: the boxes store it was extracted from ({boxes_path}) is not there")
    boxes = open_store(boxes_path)
    check_boxes_unchanged(boxes, boxes_path, upstream.get("boxes"), force, "its boxes would not match the store's")
    manifest_path = Path(reader.manifest_path)
    manifest = Manifest.load(manifest_path)
    videos = list(reader.video_ids)
    if splits:
        wanted = {video.id for video in manifest.videos if video.split in splits}
        videos = [video for video in videos if video in wanted]
        if not videos:
            raise UsageError(f"{features_path}: holds no videos of the split(s) {', '.join(splits)}")
    inputs = {
        "features": {"path": str(features_path.resolve()), "fingerprint": reader.fingerprint},
        "boxes": {"path": str(Path(boxes_path).resolve()), "fingerprint": boxes.fingerprint},
    }
    if not hasattr(encoder, "embed_crops"):
        encoder = encoder()
    identity = encoder.identity()
    fingerprint = _fingerprint(inputs, identity)
    if (
        previous is not None
        and previous.get("fingerprint") == fingerprint
        and previous.get("videos") == videos
        and out.is_file()
        and file_sha256(out) == previous.get("npz_sha256")
    ):
        return {**previous, "reused": True}
    views = int(reader.attrs.get("views") or 1)
    clips = int(boxes.attrs.get("clips") or 1)
    flips = _view_flips(reader.provenance, views, clips)
    loader = FramesLoader(manifest, Path(boxes_path))
    pairs = 0
    with (
        atomic_path(out, suffix=".npz") as tmp,
        zipfile.ZipFile(tmp, "w", allowZip64=True) as archive,
        log.progress("region embeddings", len(videos)) as bar,
    ):
        _write_member(archive, "videos", np.array(videos, dtype=str))
        for row, video in enumerate(videos):
            arrays = reader.read(video, ["boxes", "valid"])
            index, rows = _video_regions(loader(video), arrays, flips, encoder)
            _write_member(archive, f"p{row}", index)
            _write_member(archive, f"e{row}", rows)
            pairs += len(index)
            bar.advance()
    info = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "inputs": inputs,
        "encoder": identity,
        "dim": int(encoder.dim),
        "views": views,
        "videos": videos,
        "counts": {"videos": len(videos), "pairs": pairs},
        "npz_sha256": file_sha256(out),
        "hoitool_version": __version__,
    }
    write_json(_sidecar(out), info)
    return {**info, "reused": False}


class RegionEmbeddings:
    """A build read back video by video: ``read(video) -> (pairs (P, 4) int64, embeddings (P, d) float32)``."""

    def __init__(self, path: Path, info: dict):
        self.path, self.info = path, info
        self.dim = int(info["dim"])
        self.videos = {video: row for row, video in enumerate(info["videos"])}
        # the open archive (an NpzFile): its directory is read once, not once per video
        self._data: Any = None

    def read(self, video: str) -> tuple[np.ndarray, np.ndarray]:
        if video not in self.videos:
            raise UsageError(f"{self.path}: holds no region embeddings of video {video!r}")
        if self._data is None:
            self._data = np.load(self.path, allow_pickle=False)
        data, row = self._data, self.videos[video]
        return data[f"p{row}"].astype(np.int64), data[f"e{row}"].astype(np.float32)

    def close(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None


def load_region_embeddings(
    path: Path | str, features_fingerprint: str | None = None, force: bool = False
) -> tuple[RegionEmbeddings, str]:
    """A finished build and its ``.npz``'s sha256; StaleArtifactError when the features store or the bytes changed.

    ``features_fingerprint``: the features store the run trains on (its regions must be of that store).
    ``force`` reads a stale build anyway (with a warning).
    """
    path = Path(path)
    check_ours(path, FORMAT, WHAT)
    info = _read_sidecar(path, FORMAT)
    if info is None or not path.is_file():
        raise UsageError(f"{path}: no finished region embeddings here (build them: hoitool text regions)")
    sha256 = file_sha256(path)
    problems = []
    recorded = info["inputs"]["features"]["fingerprint"]
    if features_fingerprint is not None and recorded != features_fingerprint:
        problems.append(
            f"{path}: made from another features store (or this one changed since): fingerprint "
            f"{recorded[:16]} -> {features_fingerprint[:16]}; rebuild them (hoitool text regions)"
        )
    if sha256 != info["npz_sha256"]:
        problems.append(f"{path}: changed since it was written (sha256 differs from {_sidecar(path).name})")
    if problems and not force:
        raise StaleArtifactError(problems[0])
    for problem in problems:
        log.warning(problem + "; used anyway (--force)")
    return RegionEmbeddings(path, info), sha256


def kind_of(identity: dict) -> str:
    return str(identity.get("kind"))


def check_same_clip(text_identity: dict, image_identity: dict, text_dim: int, image_dim: int) -> None:
    """Refuse a text / image encoder pair whose similarities mean nothing (UsageError); ``tiny`` pairs are for tests.

    Two real models must be the same CLIP: open_clip with the same architecture and weights file,
    or transformers from directories of the same files. A real model beside a ``tiny`` one is refused
    too (random vectors against CLIP's). ``tiny`` with ``tiny`` is allowed (tests and the demo: the
    similarities are random, the wiring is what is tested). User embeddings (``file:``) cannot be
    checked: allowed with a warning.
    """
    if text_dim != image_dim:
        raise UsageError(
            f"the region embeddings are {image_dim}-dimensional but the text encoder gives {text_dim}: "
            "use the image and text towers of one CLIP"
        )
    text, image = kind_of(text_identity), kind_of(image_identity)
    if text == "file":
        log.warning("text encoder file:...: hoitool cannot check that its embeddings are of the image encoder's CLIP")
        return
    if text == "tiny" and image == "tiny":
        return
    if "tiny" in (text, image):
        raise UsageError(
            f"a {text} text encoder with a {image} image encoder: a tiny encoder is random, so its similarities "
            "to a real model's embeddings mean nothing; use one CLIP's two towers (or tiny with tiny, for tests)"
        )
    same = text == image and (
        (
            text == "open_clip"
            and text_identity.get("model") == image_identity.get("model")
            and text_identity.get("weights_sha256") == image_identity.get("weights_sha256")
        )
        or (text == "hf" and text_identity.get("files") == image_identity.get("files"))
    )
    if not same:
        raise UsageError(
            f"the text encoder ({text} {text_identity.get('model', '')}) and the region embeddings' image encoder "
            f"({image} {image_identity.get('model', '')}) are not the same CLIP: region-to-text similarities would "
            "be meaningless; embed both with one model's two towers"
        )


def region_pseudo_labels(
    pairs: np.ndarray,
    regions: np.ndarray,
    verbs: np.ndarray,
    objects: np.ndarray,
    object_valid: np.ndarray,
    temperature: float = 0.1,
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """A video's soft-relation pseudo-labels per view: ``{view: (pairs (P, 3) (frame, person, object), y (P, Cp))}``.

    ``pairs (P, 4)`` / ``regions (P, d)`` as :meth:`RegionEmbeddings.read` gives them; ``verbs (Cp, d)``
    the text embeddings of the video's positive interactions, ``objects (Cp, d)`` each one's object
    (``object_valid (Cp,)`` False: the triplet names none). Exactly
    :func:`hoitool.nn.contrastive.soft_relation_targets` over the view's pairs (all valid): the best
    pair of each interaction gets 1, the others ``q / max q``.
    """
    import torch

    from hoitool.nn.contrastive import soft_relation_targets

    labels = {}
    columns = len(verbs)
    for view in np.unique(pairs[:, 0]).tolist():
        rows = np.flatnonzero(pairs[:, 0] == view)
        y = soft_relation_targets(
            torch.ones(1, len(rows), dtype=torch.bool),
            torch.ones(1, columns, dtype=torch.bool),
            torch.from_numpy(regions[rows][None]),
            torch.from_numpy(np.asarray(verbs, np.float32)),
            torch.from_numpy(np.asarray(objects, np.float32)[None]),
            torch.from_numpy(np.asarray(object_valid, bool)[None]),
            temperature,
        )[0]
        labels[int(view)] = (pairs[rows, 1:], y.numpy())
    return labels
