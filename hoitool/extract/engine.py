"""The loop every per-video stage shares: skip what is done, decode in workers, compute,
hand results to the background writer, record failures, finalize, report.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from hoitool import log
from hoitool.config import save_config
from hoitool.errors import HoitoolError, SomeVideosFailed
from hoitool.io.process import worker_init
from hoitool.store.staging import StagedStore, sidecar


@dataclass
class StageSummary:
    path: Path
    done: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


class VideoFailure(HoitoolError):
    """A problem with one video: recorded in failures.jsonl, the run goes on."""


class PerVideoDataset(Dataset):
    """Runs ``load(video_id)`` in DataLoader workers; a failure becomes a record, not a crash."""

    def __init__(self, video_ids: list[str], load: Callable[[str], dict]):
        self.video_ids = video_ids
        self.load = load

    def __len__(self) -> int:
        return len(self.video_ids)

    def __getitem__(self, index: int) -> dict:
        video_id = self.video_ids[index]
        try:
            return {"video": video_id, **self.load(video_id)}
        except HoitoolError as exc:
            return {"video": video_id, "error": str(exc)}
        except Exception as exc:  # an unexpected decoder error must not end the whole run
            return {"video": video_id, "error": f"{type(exc).__name__}: {exc}"}


def iterate_loaded(video_ids: list[str], load: Callable[[str], dict], workers: int) -> Iterable[dict]:
    """Yield loaded items in order, decoding ``workers`` videos ahead of the model."""
    if not video_ids:
        return iter(())
    dataset = PerVideoDataset(video_ids, load)
    return DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        collate_fn=lambda item: item,
        prefetch_factor=2 if workers else None,
        persistent_workers=False,
        worker_init_fn=worker_init()
        if workers
        else None,  # kill -9 of this process takes its workers (and their lock) with it
    )


def run_video_stage(
    staged: StagedStore,
    video_ids: list[str],
    load: Callable[[str], dict],
    compute: Callable[[dict], tuple[dict, dict]],
    provenance: dict,
    workers: int,
    description: str,
    extra_meta: dict | None = None,
) -> StageSummary:
    """Process every video not yet done; finalize the store; raise SomeVideosFailed if any failed.

    ``load(video_id)`` runs in a worker (decode, read annotations); ``compute(item)`` runs in the
    main process (the model) and returns ``(arrays, video_attrs)``.
    """
    save_config(provenance["config"], staged.path.parent, sidecar(staged.path, "config.yaml").name)
    done_before = staged.done_ids()
    todo = [video_id for video_id in sorted(video_ids) if video_id not in done_before]
    summary = StageSummary(path=staged.path, skipped=len(video_ids) - len(todo))
    if summary.skipped:
        log.info(f"{staged.path.name}: {summary.skipped} videos already done, {len(todo)} to go")
    try:
        _process(staged, todo, load, compute, workers, description, summary)
        if not staged.done_ids() and not staged.path.exists():
            failures = staged.failures()
            raise SomeVideosFailed(
                f"{staged.path}: every video failed ({len(failures)}); first: {failures[0]['error'] if failures else '?'}"
            )
        summary.meta = staged.finalize(provenance, extra_meta)
    except OSError as exc:  # a full disk, a folder turned read-only: say what is kept and how to go on
        staged.close()
        raise _write_fault(staged, exc) from None
    except BaseException:
        staged.close()  # release the writer lock now, not when the garbage collector finds the store (in-process callers)
        raise
    summary.failed = summary.meta["failed"]
    return summary


def _process(staged, todo, load, compute, workers, description, summary) -> None:
    """Load, compute and stage every video of ``todo``; a video's failure is recorded, the run goes on."""
    with (
        log.progress(description, len(todo)) as bar,
        staged.writer(expected=len(todo)) as write,
        torch.inference_mode(),
    ):
        for item in iterate_loaded(todo, load, workers):
            video_id = item["video"]
            error = item.get("error")
            if error is None:
                try:
                    arrays, attrs = compute(item)
                    write(video_id, arrays, attrs)
                    summary.done += 1
                except VideoFailure as exc:
                    error = str(exc)
            if error is not None:
                staged.fail(video_id, error)
                log.debug(f"failed: {error}")
            bar.advance(1, note=video_id)


def _write_fault(staged: StagedStore, exc: OSError) -> HoitoolError:
    """One line for a file-system fault while writing: how many finished videos are kept, and that re-running resumes."""
    kept = len(staged.done_ids())
    where = exc.filename or staged.path
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    cause = "no space left on the device" if full else exc.strerror or str(exc)
    return HoitoolError(
        f"{where}: {cause} while writing {staged.path}; {kept} finished videos are kept "
        f"(in {staged.parts.name} and the store); {'free some space' if full else 'fix that'} "
        "and run the same command again to resume"
    )


def finish(summary: StageSummary) -> None:
    """Print the outcome; exit code 3 (SomeVideosFailed) when videos failed."""
    meta = summary.meta
    log.info(
        f"wrote {summary.path} ({meta['num_videos']} videos, fingerprint {meta['fingerprint']}; "
        f"{summary.done} new, {summary.skipped} reused)"
    )
    if summary.failed:
        path = sidecar(summary.path, "failures.jsonl")
        first = summary.failed[0]
        raise SomeVideosFailed(
            f"{len(summary.failed)} videos failed (listed in {path}); first: {first['error']}; "
            "fix them and run the same command again to process only those"
        )
