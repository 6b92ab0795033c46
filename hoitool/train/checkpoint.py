"""Checkpoints that hold the *whole* training state, written atomically.

A resumed run must continue exactly where it stopped, so ``last.pt`` holds the
model(s), optimizer(s), scheduler(s), grad scaler, the finished epoch, the best
validation score so far, and every random-number state (python, numpy, torch,
CUDA, and the generators the data pipeline owns). ``best.pt`` holds the same
structure for the epoch with the best validation score.

Checkpoints are *data*: every value is a tensor or a JSON-like value (dict, list,
str, number, bool, None), so every checkpoint loads with
``torch.load(..., weights_only=True)``, which runs no code from the file. The
python and numpy RNG states are stored as tensors for that reason. A file that
needs pickle to load (an older hoitool's, or anyone else's) is refused.
"""

from __future__ import annotations

import io
import pickle
import random
from pathlib import Path
from typing import cast

import numpy as np
import torch

from hoitool.errors import HoitoolError
from hoitool.io.atomic import atomic_path

FORMAT = "hoitool.checkpoint/2"  # /2: RNG states as tensors, loadable with weights_only=True


def capture_rng_state() -> dict:
    """Every global random state a training epoch can consume, as tensors and numbers."""
    version, words, gauss = random.getstate()
    legacy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())  # legacy=True: the tuple
    name, keys, position, has_gauss, cached = legacy_state
    state = {
        "python": {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    python, numpy = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    np.random.set_state(
        (
            numpy["name"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path | str, state: dict) -> None:
    """``torch.save`` to a temporary name, fsync, rename: a checkpoint under its final name is complete."""
    buffer = (
        io.BytesIO()
    )  # serialised in memory, written by Python: a full disk is an OSError (ENOSPC), not a RuntimeError
    torch.save(dict(state, format=FORMAT), buffer)
    with atomic_path(path, suffix=".pt") as tmp:
        tmp.write_bytes(buffer.getbuffer())


def load_checkpoint(path: Path | str) -> dict:
    """Read a checkpoint as data only (``weights_only=True``); one that needs pickle is refused."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise HoitoolError(
            f"{path}: needs pickle to load (written by an older hoitool, or not by hoitool); "
            "refusing to run code from it: retrain, or --force without --resume to start over"
        ) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise HoitoolError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise HoitoolError(f"{path}: not a hoitool checkpoint (expected format {FORMAT})")
    return state
