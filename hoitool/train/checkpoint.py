"""Checkpoints that hold the *whole* training state, written atomically.

A resumed run must continue exactly where it stopped, so ``last.pt`` holds the
model(s), optimizer(s), scheduler(s), grad scaler, the finished epoch, the best
validation score so far, and every random-number state (python, numpy, torch,
CUDA, and the generators the data pipeline owns). ``best.pt`` holds the same
structure for the epoch with the best validation score.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from hoitool.errors import HoitoolError
from hoitool.io.atomic import atomic_path

FORMAT = "hoitool.checkpoint/1"


def capture_rng_state() -> dict:
    """Every global random state a training epoch can consume."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path | str, state: dict) -> None:
    """``torch.save`` to a temporary name, fsync, rename: a checkpoint under its final name is complete."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(dict(state, format=FORMAT), tmp)


def load_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    try:
        # weights_only=False: the state holds numpy/python RNG tuples; these are our own files
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user-facing problem
        raise HoitoolError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise HoitoolError(f"{path}: not a hoitool checkpoint (expected format {FORMAT})")
    return state
