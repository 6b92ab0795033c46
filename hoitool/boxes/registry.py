"""The box sources by name (as torchvision's ``register_model`` / ``get_model`` / ``list_models``).

A box source says where ``extract boxes`` takes a video's boxes from. Each module of
:mod:`hoitool.boxes.sources` registers one when imported::

    register_box_source(MySource())  # a BoxSource: name, summary, needs, check, read, start

The registry imports every module of that package on first use, so a fifth source is one module
(plus its test): ``--source mysource``, the config's ``source`` and its ``--help`` come from here.
Nothing here (nor in the source modules at import time) imports torch, so ``--help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Protocol

from hoitool.errors import UsageError

if TYPE_CHECKING:
    from hoitool.boxes.jsonl import FrameBoxes
    from hoitool.manifest import Manifest

# What a source needs before it can work, as ``--help`` and ``needs`` say it.
MODEL, MANIFEST_BOXES, IMPORT_FILE = "model", "manifest boxes", "import file"


class VideoBoxes(Protocol):
    """The per-video box function of a started source (main process; may hold a model)."""

    weights: dict[str, str]  # what the boxes depend on beyond the config (fingerprints), for provenance

    def __call__(self, item: dict) -> list[list[FrameBoxes]]:
        """A video's item from :meth:`BoxSource.read` -> per clip, per sampled frame, its boxes."""
        ...


class BoxSource(Protocol):
    """Where a video's boxes come from: checked before any work, read in a worker, boxed in the main process."""

    @property
    def name(self) -> str: ...  # read-only members, so a frozen dataclass is a BoxSource

    @property
    def summary(self) -> str: ...  # one line for --help and docs

    @property
    def needs(self) -> str: ...  # MODEL, MANIFEST_BOXES or IMPORT_FILE (or a new kind, in words)

    def check(self, config: dict) -> None:
        """Raise :class:`~hoitool.errors.UsageError` for a config this source cannot use (nothing written yet)."""

    def read(self, manifest: Manifest, video: Any, indices: Any, config: dict) -> dict:
        """Worker side: what :meth:`start`'s function needs of one video at the sampled ``indices`` (clips, T).

        Raise a :class:`~hoitool.errors.HoitoolError` for a fault of this video only: the worker
        records it as that video's failure and the run goes on.
        """
        ...

    def start(self, config: dict) -> VideoBoxes:
        """Main process, once per run: build what boxes the videos (a model, a file's fingerprint)."""
        ...


_SOURCES: dict[str, BoxSource] = {}
_discovered: list[bool] = []


def register_box_source(source: BoxSource) -> BoxSource:
    """Register ``source`` under its name (a programming error if another source has it)."""
    existing = _SOURCES.get(source.name)
    if existing is not None and existing != source:
        raise ValueError(f"a box source named {source.name!r} is already registered")
    _SOURCES[source.name] = source
    return source


def unregister_box_source(name: str) -> None:
    """Forget ``name`` (for tests that register a source in-process)."""
    _SOURCES.pop(name, None)


def _discover() -> None:
    """Import every module of :mod:`hoitool.boxes.sources` once, so each registers its source."""
    if _discovered:
        return
    _discovered.append(True)
    import hoitool.boxes.sources as package

    for module in sorted(info.name for info in pkgutil.iter_modules(package.__path__)):
        if module != "common" and not module.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module}")


def list_box_sources() -> list[str]:
    """The registered names, sorted."""
    _discover()
    return sorted(_SOURCES)


def get_box_source(name: str) -> BoxSource:
    """The source registered as ``name``; an unknown name is a UsageError listing the known ones."""
    _discover()
    if name not in _SOURCES:
        raise UsageError(f"unknown box source {name!r} (known: {', '.join(list_box_sources())})")
    return _SOURCES[name]


def describe_box_sources() -> str:
    """``name (summary)`` for each source, for the config's description and so ``--help``."""
    return "; ".join(f"{name} ({get_box_source(name).summary})" for name in list_box_sources())
