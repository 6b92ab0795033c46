"""Batches of node features for training and inference, read from a features store.

* :class:`ViewDataset` serves one (video, view) per item; the *sampler* decides
  the order, the view (view 0, or a random one with ``data.random_view``) and
  each sample's loss weight, so workers never draw random numbers and a resumed
  epoch replays exactly.
* :class:`VideoDataset` serves every view of one video per item (inference).
* Both read lazily from the store (the reader reopens its file in each worker
  process) or from RAM after :meth:`preload` when the split fits the budget.
* :func:`collate` pads to the largest T and K of the batch (videos of one store
  normally share them) and stacks into dense tensors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from hoitool import log
from hoitool.errors import HoitoolError, UsageError
from hoitool.io.process import worker_init
from hoitool.manifest import Manifest

FIELDS = ("nodes", "valid", "boxes", "frame_size", "frame_indices")  # frame_indices: what a lead time cuts
# Niceness of store-reading workers. 0: niceness 10 measured no faster on a quiet 2-core machine (80% vs 81% of RAM
# speed) and lets other jobs starve the loader on a shared one (docs/cache-format.md, "Lazy reads";
# bench/train.py --worker-niceness compares)
WORKER_NICENESS = 0


@dataclass
class SplitVideos:
    """The videos of one split that the store holds, with their labels."""

    split: str
    video_ids: list[str]
    targets: np.ndarray  # (N,) int64 class index, or (N, C) float32 multi-hot
    multilabel: bool
    num_classes: int
    objects: np.ndarray | None = None  # (N, slots) int64 object-slot targets (dual attention; -1: no label)
    arrays: tuple[str, ...] = ()  # store arrays read beyond FIELDS, served per view (e.g. frame_maps)
    view_targets: np.ndarray | None = None  # (N, V, C) per-view targets (data.labels=clip: clip_labels)

    def __len__(self) -> int:
        return len(self.video_ids)

    def target(self, position: int, view: int) -> np.ndarray:
        """What sample ``(position, view)`` trains on: its clip's labels where set, else the video's."""
        if self.view_targets is not None:
            return self.view_targets[position, view]
        return self.targets[position]

    def one_hot(self) -> np.ndarray:
        """(N, C) 0/1 targets, the form the run outputs hold for both kinds of label."""
        if self.multilabel:
            return self.targets.astype(np.float32)
        hot = np.zeros((len(self.video_ids), self.num_classes), dtype=np.float32)
        hot[np.arange(len(self.video_ids)), self.targets] = 1.0
        return hot


def split_videos(manifest: Manifest, store_ids: list[str], split: str) -> SplitVideos:
    """Videos of ``split`` in the manifest that are in the store (id order); single- or multi-label targets."""
    present = set(store_ids)
    entries = [video for video in manifest.split(split) if video.id in present]
    missing = len(manifest.split(split)) - len(entries)
    if missing:
        log.info(
            f"{split}: {missing} video(s) of the manifest are not in the features store (failed extraction?); skipped"
        )
    if manifest.multilabel:
        targets = np.zeros((len(entries), manifest.num_classes), dtype=np.float32)
        for row, video in enumerate(entries):
            targets[row, video.labels] = 1.0
    else:
        targets = np.array([video.labels[0] for video in entries], dtype=np.int64)
    return SplitVideos(split, [video.id for video in entries], targets, manifest.multilabel, manifest.num_classes)


def clip_labels(manifest: Manifest, reader, videos: SplitVideos) -> SplitVideos:
    """``videos`` with per-view targets: each view's clip is labelled by the actions whose interval overlaps it.

    PySlowFast's Charades rule: a clip's label is the union of the labels of its frames from the
    first sampled frame to the last, a frame at time ``index / fps`` carrying every action whose
    ``[start, end]`` (seconds) holds it; as intervals, action ``(c, start, end)`` labels the clip
    when ``start <= t_last`` and ``end >= t_first``. A clip that no action overlaps gets an all-zero
    target. Intervals come from the manifest (``extra.actions`` per video: ``[[class, start, end], ...]``,
    written by ``prepare charades``), the clip's frames from the store's ``frame_indices`` /
    ``frame_valid``, the frame rate from the manifest (``fps``) or, where it has none, the source's
    header. Everything is checked here, before any training.
    """
    if not manifest.multilabel:
        raise UsageError(
            f"data.labels=clip labels clips by their actions' time intervals (multi-label data such as Charades); "
            f"the {manifest.dataset} manifest is single-label: use data.labels=video"
        )
    entries = manifest.by_id()
    lacking = [video_id for video_id in videos.video_ids if "actions" not in entries[video_id].extra]
    if lacking:
        raise UsageError(
            f"data.labels=clip needs each {videos.split} video's action intervals (the manifest's extra.actions, "
            f"written by prepare charades): {len(lacking)} of {len(videos)} lack them, e.g. {lacking[0]!r} "
            f"(prepare the dataset again, or use data.labels=video)"
        )
    rows = []
    for video_id in videos.video_ids:
        video = entries[video_id]
        arrays = reader.read(video_id, ["frame_indices", "frame_valid"])
        rows.append(
            clip_targets(
                _actions(video, manifest.num_classes),
                arrays["frame_indices"],
                arrays["frame_valid"],
                _frame_rate(manifest, video),
                manifest.num_classes,
            )
        )
    views = {row.shape[0] for row in rows}
    if len(views) > 1:
        raise UsageError(f"data.labels=clip: the store's {videos.split} videos hold different numbers of views {views}")
    return dataclasses.replace(videos, view_targets=np.stack(rows) if rows else None)


def clip_targets(
    actions: list[tuple[int, float, float]],
    frame_indices: np.ndarray,
    frame_valid: np.ndarray,
    fps: float,
    num_classes: int,
) -> np.ndarray:
    """(V, C) multi-hot: per view, the actions whose ``[start, end]`` overlaps the clip's sampled time span."""
    targets = np.zeros((frame_indices.shape[0], num_classes), dtype=np.float32)
    for view in range(frame_indices.shape[0]):
        frames = frame_indices[view][frame_valid[view]]
        if not frames.size:
            continue
        first, last = frames.min() / fps, frames.max() / fps
        for label, start, end in actions:
            if start <= last and end >= first:
                targets[view, label] = 1.0
    return targets


def _actions(video, num_classes: int) -> list[tuple[int, float, float]]:
    """The manifest's ``[[class, start, end], ...]`` of one video, checked."""
    actions = video.extra["actions"]
    try:
        parsed = [(int(label), float(start), float(end)) for label, start, end in actions]
    except (TypeError, ValueError):
        raise UsageError(
            f"video {video.id!r}: extra.actions must be a list of [class, start, end], got {actions!r}"
        ) from None
    bad = [label for label, _, _ in parsed if not 0 <= label < num_classes]
    if bad:
        raise UsageError(f"video {video.id!r}: extra.actions has classes {bad} outside 0..{num_classes - 1}")
    return parsed


def _frame_rate(manifest: Manifest, video) -> float:
    """The video's frames per second: the manifest's, else its source's header (a frame folder has none)."""
    if video.fps:
        return float(video.fps)
    from hoitool.video.reader import probe

    path = manifest.source_path(video)
    try:
        fps = probe(path, video.kind).fps
    except (HoitoolError, OSError) as exc:
        raise UsageError(
            f"data.labels=clip needs video {video.id!r}'s frame rate: the manifest has no fps and {path} "
            f"cannot be read ({exc})"
        ) from None
    if not fps:
        raise UsageError(
            f"data.labels=clip needs video {video.id!r}'s frame rate: neither the manifest nor {path} gives one"
        )
    return float(fps)


class SampleRef(NamedTuple):
    """What the sampler hands the dataset: which video, which view, and the sample's loss weight."""

    position: int  # the video's position in the split (a field named index would shadow tuple.index)
    view: int
    weight: float


class _StoreBacked(Dataset):
    """Shared lazy/preloaded access to the store's arrays for one split."""

    def __init__(self, reader, videos: SplitVideos, views: int | None):
        self.reader = reader
        self.videos = videos
        self.kept_views = views  # how many leading views to keep when preloading (None = all)
        self._cache: list[dict[str, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def preloaded(self) -> bool:
        return self._cache is not None

    def _read(self, index: int) -> dict[str, np.ndarray]:
        arrays = self.reader.read(self.videos.video_ids[index], [*FIELDS, *self.videos.arrays])
        if self.kept_views is not None:
            arrays = {
                name: value if name == "frame_size" else value[: self.kept_views] for name, value in arrays.items()
            }
        return arrays

    def extras(self, arrays: dict[str, np.ndarray], index: int, view: int) -> dict:
        """A sample's entries beyond the GLIDN fields: the split's extra arrays at ``view``, its object targets."""
        extra = {name: arrays[name][view] for name in self.videos.arrays}
        if self.videos.objects is not None:
            extra["objects"] = self.videos.objects[index]
        return extra

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        return self._cache[index] if self._cache is not None else self._read(index)

    def estimated_bytes(self) -> int:
        """RAM the whole split takes once preloaded, extrapolated from its first video."""
        if not len(self):
            return 0
        first = self._read(0)
        return sum(array.nbytes for array in first.values()) * len(self)

    def preload(self, show_progress: bool = True) -> None:
        cache = []
        progress = (
            log.progress(f"loading {self.videos.split} into RAM", len(self))
            if show_progress
            else contextlib.nullcontext()
        )
        with progress as bar:
            for index in range(len(self)):
                cache.append(self._read(index))
                if bar is not None:
                    bar.advance()
        self._cache = cache
        self.release()

    def release(self) -> None:
        """Close this process's store handle (before forking workers, which open their own)."""
        self.reader.close()


class ViewDataset(_StoreBacked):
    """One (video, view) per item: ``dataset[SampleRef(position, view, weight)]``."""

    def __init__(self, reader, videos: SplitVideos, random_view: bool = False):
        super().__init__(reader, videos, views=None if random_view else 1)

    def __getitem__(self, ref: SampleRef) -> dict:
        arrays = self.arrays(ref.position)
        view = ref.view % arrays["nodes"].shape[0]
        sample = {name: arrays[name][view] for name in ("nodes", "valid", "boxes", "frame_indices")}
        sample.update(
            frame_size=arrays["frame_size"],
            index=ref.position,
            view=view,
            weight=ref.weight,
            target=self.videos.target(ref.position, view),
        )
        sample.update(self.extras(arrays, ref.position, view))
        return sample


class VideoDataset(_StoreBacked):
    """Every view of one video per item (inference covers all test-time views)."""

    def __init__(self, reader, videos: SplitVideos):
        super().__init__(reader, videos, views=None)

    def __getitem__(self, index: int) -> list[dict]:
        arrays = self.arrays(index)
        target = self.videos.targets[index]
        return [
            {
                "nodes": arrays["nodes"][view],
                "valid": arrays["valid"][view],
                "boxes": arrays["boxes"][view],
                "frame_indices": arrays["frame_indices"][view],
                "frame_size": arrays["frame_size"],
                "index": index,
                "view": view,
                "weight": 1.0,
                "target": target,
                **self.extras(arrays, index, view),
            }
            for view in range(arrays["nodes"].shape[0])
        ]


ALIGN = 64  # bytes: each field of a packed batch starts on a cache line (and any dtype's alignment)


class PackedBatch(dict):
    """A worker's batch whose tensors are views of one shared-memory buffer, so it travels as one tensor.

    Torch sends each tensor of a batch as its own shared-memory file descriptor, and
    receiving one costs the main process a socket connection (about 0.3 ms; 9 tensors a
    batch measured 3.1 ms of main-process CPU against 1.0 ms for one, bench/train.py).
    Unpickled in the main process it is a plain dict of the same tensors.
    """

    def __init__(self, buffer: torch.Tensor, layout: dict[str, tuple[int, torch.dtype, tuple[int, ...]]]):
        super().__init__(unpack_batch(buffer, layout))
        self.buffer, self.layout = buffer, layout

    def __reduce__(self):
        return unpack_batch, (self.buffer, self.layout)


def unpack_batch(buffer: torch.Tensor, layout: dict) -> dict[str, torch.Tensor]:
    """The fields of a packed batch: views of ``buffer`` at their offsets."""
    fields = {}
    for name, (offset, dtype, shape) in layout.items():
        size = math.prod(shape) * dtype.itemsize
        fields[name] = buffer[offset : offset + size].view(dtype).view(shape)
    return fields


def _allocate(specs: dict[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, torch.Tensor]:
    """Uninitialised batch tensors; in a DataLoader worker, views of one shared buffer (a :class:`PackedBatch`).

    A tensor made in ordinary memory in a worker is copied into shared memory when it is
    sent, so filling shared memory directly also saves a copy per batch.
    """
    dtypes = {name: torch.from_numpy(np.empty(0, dtype=dtype)).dtype for name, (_, dtype) in specs.items()}
    if get_worker_info() is None:
        return {name: torch.empty(shape, dtype=dtypes[name]) for name, (shape, _) in specs.items()}
    layout, total = {}, 0
    for name, (shape, dtype) in specs.items():
        layout[name] = (total, dtypes[name], tuple(shape))
        total += -(-math.prod(shape) * np.dtype(dtype).itemsize // ALIGN) * ALIGN
    storage = torch.UntypedStorage(0)._new_shared(max(total, 1), device="cpu")
    return PackedBatch(torch.empty(0, dtype=torch.uint8).set_(storage), layout)


def _padded_shape(arrays: list[np.ndarray]) -> tuple[int, ...]:
    """``(batch, *largest)``: T and K padded up to the batch's largest."""
    return (len(arrays), *(max(sizes) for sizes in zip(*(array.shape for array in arrays), strict=False)))


def _fill_padded(out: np.ndarray, arrays: list[np.ndarray], fill) -> None:
    if all(array.shape == out.shape[1:] for array in arrays):
        np.stack(arrays, out=out)
        return
    out.fill(fill)
    for row, array in enumerate(arrays):
        out[(row,) + tuple(slice(0, size) for size in array.shape)] = array


def collate(samples: list) -> dict[str, torch.Tensor]:
    """Samples (or lists of per-view samples) -> dense batch tensors; padded nodes are invalid."""
    if samples and isinstance(samples[0], list):
        samples = [view for video in samples for view in video]
    padded: dict[str, tuple[list[np.ndarray], object]] = {
        "nodes": ([np.asarray(s["nodes"]) for s in samples], 0),
        "valid": ([np.asarray(s["valid"]) for s in samples], False),
        "boxes": ([np.asarray(s["boxes"]) for s in samples], 0),
    }
    stacked: dict[str, np.ndarray] = {
        "frame_size": np.stack([s["frame_size"] for s in samples]).astype(np.float32),
        "index": np.array([s["index"] for s in samples], dtype=np.int64),
        "view": np.array([s["view"] for s in samples], dtype=np.int64),
        "weight": np.array([s["weight"] for s in samples], dtype=np.float32),
        "target": np.stack([np.asarray(sample["target"]) for sample in samples]),
    }
    if samples and "frame_indices" in samples[0]:  # decoded frame of each sampled frame (padding: -1)
        padded["frame_indices"] = ([np.asarray(s["frame_indices"]) for s in samples], -1)
    for name in sorted(samples[0].keys() - padded.keys() - stacked.keys()) if samples else ():  # extras
        values = [np.asarray(s[name]) for s in samples]  # a split's extras (objects, frame_maps)
        padded[name] = (values, False if values[0].dtype == bool else 0)
    order = ["nodes", "valid", "boxes", *stacked, *(name for name in padded if name not in ("nodes", "valid", "boxes"))]
    specs = {name: (_padded_shape(padded[name][0]), padded[name][0][0].dtype) for name in padded}
    specs.update({name: (value.shape, value.dtype) for name, value in stacked.items()})
    batch = _allocate({name: specs[name] for name in order})
    for name, (arrays, fill) in padded.items():
        _fill_padded(batch[name].numpy(), arrays, fill)
    for name, value in stacked.items():
        batch[name].numpy()[...] = value
    return batch


class EpochBatchSampler:
    """Seeded batches of :class:`SampleRef`; epoch ``e`` is a pure function of ``(seed, e)``.

    Under DDP every rank draws the same permutation and takes a strided share of
    each *global* batch of ``batch_size`` samples. Each sample weighs
    ``world_size / len(global batch)``, so the sum over a rank's samples,
    averaged over ranks by DDP, is the global batch mean; a rank left without a
    sample (a last batch smaller than the world) gets one dummy of weight 0.
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        num_views: int = 1,
        random_view: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise UsageError(f"train.batch_size must be at least 1, got {batch_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.shuffle, self.num_views, self.random_view = shuffle, num_views, random_view
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = state["seed"], state["epoch"]

    def __len__(self) -> int:
        return math.ceil(self.num_items / self.batch_size)

    def __iter__(self) -> Iterator[list[SampleRef]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = (
            torch.randperm(self.num_items, generator=generator).tolist()
            if self.shuffle
            else list(range(self.num_items))
        )
        if self.random_view and self.num_views > 1:
            views = torch.randint(self.num_views, (self.num_items,), generator=generator).tolist()
        else:
            views = [0] * self.num_items
        for start in range(0, self.num_items, self.batch_size):
            batch = order[start : start + self.batch_size]
            weight = self.world_size / len(batch)
            mine = batch[self.rank :: self.world_size]
            if mine:
                yield [SampleRef(index, views[index], weight) for index in mine]
            else:
                yield [SampleRef(batch[0], views[batch[0]], 0.0)]


def decide_preload(setting, dataset: _StoreBacked, budget_gb: float | None) -> bool:
    """``data.preload``: true/false, or ``auto`` = when the split fits the budget (default: 25% of RAM)."""
    if setting in (True, "true", "yes"):
        return True
    if setting in (False, "false", "no"):
        return False
    if setting != "auto":
        raise UsageError(f"data.preload must be auto, true or false, got {setting!r}")
    budget = budget_gb * 2**30 if budget_gb is not None else 0.25 * _physical_memory()
    needed = dataset.estimated_bytes()
    dataset.release()
    log.debug(f"{dataset.videos.split}: {needed / 2**20:.1f} MiB when preloaded, budget {budget / 2**20:.0f} MiB")
    return needed <= budget


def _physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):
        return 8 * 2**30


def make_loader(
    dataset: _StoreBacked,
    workers: int,
    pin_memory: bool,
    seed: int,
    batch_sampler: EpochBatchSampler | None = None,
    batch_size: int | None = None,
    persistent: bool = True,
) -> DataLoader:
    """A DataLoader with its own seeded generator (so it never draws from the global torch RNG).

    ``persistent`` keeps the workers between epochs (loaders iterated once per epoch).
    """
    workers = 0 if dataset.preloaded else workers
    batching = {"batch_sampler": batch_sampler} if batch_sampler is not None else {"batch_size": batch_size}
    return DataLoader(
        dataset,
        **batching,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        persistent_workers=persistent and workers > 0,
        generator=torch.Generator().manual_seed(seed),
        # workers die with this process (kill -9 of the parent leaves no orphan)
        worker_init_fn=worker_init(niceness=WORKER_NICENESS),
    )


def batches(loader: DataLoader) -> Iterator[dict[str, torch.Tensor]]:
    """Iterate a loader; the parent's store handle is closed first so forked workers never share it."""
    if loader.num_workers:
        cast(_StoreBacked, loader.dataset).release()  # loaders here are built over store-backed datasets
    yield from loader


def features_dataset(features, split: str = "train", manifest=None) -> VideoDataset:
    """A ``torch.utils.data.Dataset`` over one split of a features store (docs/python-api.md).

    Item ``i`` is a list with one dict per stored view (``nodes`` (T, K, D), ``valid``,
    ``boxes``, ``frame_size``, ``target``); ``collate`` batches them. Labels and splits come
    from ``manifest`` (a path), else from the manifest the store was built from.
    """
    from hoitool.store import open_store

    reader = open_store(features)
    path = manifest or reader.manifest_path
    if not path:
        raise UsageError(f"{features}: the store does not say which manifest it was built from; pass manifest=PATH")
    return VideoDataset(reader, split_videos(Manifest.load(path), reader.video_ids, split))
