"""Training methods: what a run trains beyond GLIDN's recipe, as one small registry of hooks.

``train-teacher`` and ``distill`` take ``--method NAME`` (config ``method.name``, default ``glidn``);
the training loop (:mod:`hoitool.train.loop`, ``fit``, ``predict``) calls the method's hooks at a
few fixed points and knows nothing else about it. A method is a subclass of :class:`Method`
registered under its name; every hook has GLIDN's behaviour as its default, so a method overrides
only what it changes. The registry follows torchvision's ``register_model`` / ``get_model`` /
``list_models`` (and :mod:`hoitool.losses.registry`)::

    @register_method("mine")
    class Mine(Method):
        kinds = ("student",)                       # run kinds it accepts (refused otherwise)

        def inputs(self, batch, split):            # what the trained model sees (e.g. lead-time truncation)
            ...
        def terms(self, training, position, batch, outputs, logits):
            terms, weights, read = super().terms(training, position, batch, outputs, logits)
            terms["mine"] = ...                    # (B,) per-sample values
            weights["mine"] = self.config["mine"]["weight"]
            return terms, weights, read + [outputs[position]["embeddings"]]

The hooks, in the order a run calls them (``training`` is the :class:`hoitool.train.loop.Training`):

* ``check(training)`` -- end of the set-up checks, **before any file is written**: refuse a bad
  combination (one line, ``UsageError``) and read/verify the method's inputs (stale artifacts:
  ``StaleArtifactError``).
* ``upstream()`` -> ``{name: fingerprint}`` of the method's own inputs (e.g. CL-HOI's VLM import, text
  encoder and text embeddings), recorded in ``last.pt`` beside the features store's and compared on
  resume by :mod:`hoitool.resume` (a change is a StaleArtifactError unless ``--force``); default none.
* ``setup(training)`` -- the run directory is ours and locked: build what the method writes before
  training (e.g. a text-embeddings cache).
* ``build_model(model_config, in_dim, num_classes)`` -- the model (default
  :func:`hoitool.nn.models.build_model`); also used to rebuild ``best.pt`` for the outputs.
* ``inputs(batch, split)`` -- the batch the model sees, for training, validation and outputs
  (``split`` names the split the batch's ``index`` positions refer to); default: unchanged.
* ``forward(model, batch)`` -> ``{"logits": (B, C), ...}``: one forward pass; other entries
  (embeddings) are what ``terms`` reads.
* ``terms(training, position, batch, outputs, logits)`` -> ``(terms, weights, read)``: the named
  per-sample loss terms ``{name: (B,)}`` of member ``position``, their weights ``{name: float}`` (a
  term without a weight is only logged) and the model outputs they read (where each term's gradient
  share is measured, :mod:`hoitool.losses.gradients`). The loop combines, logs (``loss_<name>``,
  ``grad_share_<name>``) and measures them without knowing the names; every step must give the same
  names. Default: GLIDN's :class:`hoitool.losses.Objective` (``ce``, ``distill``) on the logits.
* ``output_arrays(outputs, batch)`` -> ``{name: (B, ...) array}``: further per-row arrays of
  ``outputs.npz`` (``Run.extra``; e.g. dual attention's object logits); default none.
* ``write_outputs(training, member)`` -- after the run's outputs: any extra artifact (e.g. node embeddings).
* ``run_info()`` -> dict recorded in ``run.json`` under ``method`` (``name`` + the method's settings)
  and ``label(kind, view, teacher_view)`` -> the default name of the run in reports.

``eval`` reads ``run.json``'s ``method`` to evaluate a run as it was trained (e.g. at lead times).
Importing this package loads no torch (hooks import it when called), so ``--help`` lists the names cheaply.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, TypeVar

from hoitool.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from hoitool.train.loop import Member, Training

DEFAULT = "glidn"


class Method:
    """GLIDN's training, hook by hook: the base every method subclasses (see the module docstring)."""

    name: ClassVar[str] = DEFAULT
    kinds: ClassVar[tuple[str, ...]] = ("teacher", "student", "dml")

    def __init__(self, config: dict):
        self.config = config  # the run's resolved training config

    def check(self, training: Training) -> None:
        if training.request.kind not in self.kinds:
            raise UsageError(
                f"--method {self.name} trains {' or '.join(self.kinds)} runs, not a {training.request.kind} run"
            )
        stray = foreign_settings(self.config, self.name)
        if stray:
            key, owner = stray[0]
            raise UsageError(f"{key} is a setting of --method {owner}, but this run's method is {self.name}")

    def upstream(self) -> dict[str, str]:
        return {}

    def setup(self, training: Training) -> None:
        return None

    def build_model(self, model_config: dict, in_dim: int, num_classes: int) -> nn.Module:
        from hoitool.nn.models import build_model

        return build_model(model_config, in_dim, num_classes)

    def inputs(self, batch: dict, split: str) -> dict:
        return batch

    def forward(self, model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        return {"logits": model(batch["nodes"], batch["valid"], batch["boxes"], batch["frame_size"])}

    def terms(
        self, training: Training, position: int, batch: dict, outputs: list[dict], logits: list[torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, float], list[torch.Tensor]]:
        objective = training.members[position].objective
        terms = objective.terms(logits[position], batch["target"], training._distill_target(position, logits, batch))
        return terms, objective.weights(), [logits[position]]

    def output_arrays(self, outputs: dict[str, torch.Tensor], batch: dict) -> dict[str, np.ndarray]:
        return {}

    def write_outputs(self, training: Training, member: Member) -> None:
        if self.config.get("train", {}).get("embeddings"):  # train-teacher --save-embeddings (any method)
            from hoitool.train.methods.embeddings import write_embeddings

            write_embeddings(training, member)

    def run_info(self) -> dict:
        return {"name": self.name}

    def label(self, kind: str, view: str, teacher_view: str | None) -> str:
        """Names as the paper's tables use them: 'global-context', 'global-teacher', 'DML (local)'."""
        if kind == "teacher":
            return "baseline" if view == "baseline" else f"{view}-context"
        if kind == "student":
            return f"{teacher_view}-teacher"
        return f"DML ({view})"


OWN_SECTIONS = {"anticipation": "anticipation", "cl_hoi": "cl_hoi", "dual_attention": "dual_attention"}


def foreign_settings(config: dict, method: str) -> list[tuple[str, str]]:
    """``(key, owner)`` of each setting of another method's section that differs from its default.

    A run of one method given another's setting (``--anticipate-at events`` on a GLIDN run, say) would
    silently ignore it; the run refuses it instead.
    """
    from hoitool.settings.training import DistillStageSettings

    defaults = DistillStageSettings().model_dump()
    found = []
    for section, owner in OWN_SECTIONS.items():
        if owner == method:
            continue
        given = config.get(section) or {}
        for name, value in given.items():
            if name in defaults.get(section, {}) and value != defaults[section][name]:
                found.append((f"{section}.{name}", owner))
    return found


M = TypeVar("M", bound=type[Method])
_METHODS: dict[str, type[Method]] = {DEFAULT: Method}
_BUILTIN = ("anticipation", "cl_hoi", "dual_attention")  # modules of this package that register a method


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: register a :class:`Method` subclass as ``name`` (a programming error if taken)."""

    def wrapper(cls: M) -> M:
        if not name or name in _METHODS:
            raise ValueError(f"a training method is already registered as {name!r}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrapper


def _load_builtin() -> None:
    for module in _BUILTIN:
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:  # a method not built yet
            if exc.name != f"{__name__}.{module}":
                raise


def list_methods() -> list[str]:
    """The registered names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The method registered as ``name``; an unknown name is a UsageError listing the registered ones."""
    if name not in _METHODS:
        raise UsageError(f"unknown training method {name!r} (registered: {', '.join(list_methods())})")
    return _METHODS[name]


def method_of(config: dict) -> Method:
    """The method a resolved training config asks for, built on that config."""
    return get_method(config.get("method", {}).get("name", DEFAULT))(config)


def method_info(run_info: dict) -> dict:
    """The ``method`` record of a ``run.json`` (runs written before methods existed are GLIDN's)."""
    info = run_info.get("method")
    return info if isinstance(info, dict) else {"name": DEFAULT}


__all__ = [
    "DEFAULT",
    "Method",
    "get_method",
    "list_methods",
    "method_info",
    "method_of",
    "register_method",
]

_load_builtin()
