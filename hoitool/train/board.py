"""TensorBoard event files of a run (``train.tensorboard``): a view of ``metrics.jsonl``, never the record.

One writer per member, ``RUN/tensorboard/main`` and ``RUN/tensorboard/peer`` (a DML run), with the
same tags, so TensorBoard overlays the two models' curves. Scalars are written in double precision
(new-style tensor summaries), so they read back equal to ``metrics.jsonl``. A resumed run's writer
purges the events past the resumed epoch that an interrupted process may have left.
"""

from __future__ import annotations

from pathlib import Path

from hoitool.errors import UsageError
from hoitool.runs import TENSORBOARD_DIR

STEP_KEY = "epoch"  # the step of every scalar, not a scalar itself


def require_tensorboard() -> None:
    """Refuse ``train.tensorboard`` before any work when its optional package is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401  (raises ImportError without the tensorboard package)
    except ImportError:
        raise UsageError(
            "train.tensorboard (--tensorboard): the tensorboard package is not installed; "
            "pip install 'hoitool[tensorboard]' (or pip install tensorboard), or drop --tensorboard"
        ) from None


def member_scalars(record: dict, prefix: str, prefixes: list[str]) -> dict[str, float]:
    """The record's numbers that belong to the member with ``prefix`` (shared ones, e.g. lr, go to the main one)."""
    others = [other for other in prefixes if other and other != prefix]
    scalars = {}
    for key, value in record.items():
        if key == STEP_KEY or not isinstance(value, int | float) or any(key.startswith(o) for o in others):
            continue
        if prefix and not key.startswith(prefix):
            continue
        scalars[key[len(prefix) :]] = float(value)  # bools (best) as 0/1
    return scalars


class Board:
    """The event writers of one run (rank 0 only): :meth:`write` once per epoch, after ``metrics.jsonl``."""

    def __init__(self, run_dir: Path, members: dict[str, str], start_epoch: int):
        """``members`` is ``{name: record key prefix}``; ``start_epoch`` the epoch a resumed run continues after."""
        from torch.utils.tensorboard import SummaryWriter

        purge = start_epoch + 1 if start_epoch else None
        self.prefixes = dict(members)
        self.writers = {
            name: SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR / name), purge_step=purge) for name in members
        }

    def write(self, record: dict) -> None:
        epoch = int(record[STEP_KEY])
        prefixes = list(self.prefixes.values())
        for name, writer in self.writers.items():
            for tag, value in member_scalars(record, self.prefixes[name], prefixes).items():
                writer.add_scalar(tag, value, epoch, new_style=True, double_precision=True)
            writer.flush()  # an interrupted run keeps every epoch it logged

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
