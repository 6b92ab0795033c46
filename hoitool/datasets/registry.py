"""The dataset preparers by name (as torchvision's ``register_model`` / ``get_model`` / ``list_models``).

Each dataset module of :mod:`hoitool.datasets` registers its preparer when imported::

    @register_preparer("mydata", MyDataSettings)
    def build(config: MyDataSettings, out: Path) -> Manifest:  # its docstring's first line: the command's help
        return prepare_mydata(Path(config.root), out, ...)

The registry imports every module of the package on first use, so a sixth dataset is one module
(plus its test): ``hoitool prepare mydata`` and ``prepare_dataset("mydata", ...)`` come from it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hoitool.datasets.common import require_root
from hoitool.errors import UsageError
from hoitool.manifest import Manifest
from hoitool.settings.base import Section

_NOT_DATASETS = {"common", "registry"}


class Preparer(Protocol):
    """What ``prepare <name>`` runs: a settings schema, a check before OUT is touched, and a build."""

    @property
    def name(self) -> str: ...  # read-only members, so a frozen dataclass is a Preparer

    @property
    def settings(self) -> type[Section]: ...

    @property
    def summary(self) -> str: ...

    def check(self, config: Any) -> None:
        """Raise :class:`~hoitool.errors.UsageError` for a config the build cannot use (nothing written yet)."""

    def build(self, config: Any, out: Path) -> Manifest:
        """Write ``out``'s manifest (and boxes, warnings) from a validated config; return the manifest."""
        ...


@dataclass(frozen=True)
class FunctionPreparer:
    """A :class:`Preparer` made of a build function; a schema with a ``root`` key needs that folder to exist."""

    name: str
    settings: type[Section]
    summary: str
    function: Callable[[Any, Path], Manifest]

    def check(self, config: Any) -> None:
        if "root" in self.settings.model_fields:
            require_root(config.root)

    def build(self, config: Any, out: Path) -> Manifest:
        return self.function(config, out)


_PREPARERS: dict[str, Preparer] = {}
_discovered: list[bool] = []
F = TypeVar("F", bound=Callable[..., Manifest])


def register_preparer(name: str, settings: type[Section]) -> Callable[[F], F]:
    """Decorator: register ``function(config, out) -> Manifest`` as the preparer ``name``.

    ``settings`` is its typed schema (the options of ``hoitool prepare name`` are made from its
    fields); the first line of the function's docstring is the command's help.
    """

    def decorate(function: F) -> F:
        existing = _PREPARERS.get(name)
        if existing is not None and getattr(existing, "function", None) is not function:
            raise ValueError(f"a dataset preparer named {name!r} is already registered")
        summary = (function.__doc__ or "").strip().split("\n")[0]
        _PREPARERS[name] = FunctionPreparer(name, settings, summary, function)
        return function

    return decorate


def _discover() -> None:
    """Import every dataset module once, so each registers its preparer."""
    if _discovered:
        return
    import hoitool.datasets as package

    for module in sorted(info.name for info in pkgutil.iter_modules(package.__path__)):
        if module not in _NOT_DATASETS and not module.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module}")
    _discovered.append(True)


def list_preparers() -> list[str]:
    """The names of the registered preparers, sorted."""
    _discover()
    return sorted(_PREPARERS)


def get_preparer(name: str) -> Preparer:
    """The preparer registered as ``name``, or a UsageError listing the known names."""
    _discover()
    try:
        return _PREPARERS[name]
    except KeyError:
        raise UsageError(f"unknown dataset {name!r} (known: {', '.join(sorted(_PREPARERS))})") from None
