"""``hoitool train-teacher`` and ``hoitool distill``: thin wrappers around :mod:`hoitool.train.loop`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hoitool.cli.app import app
from hoitool.cli.options import ConfigOption, ForceOption, PrintConfigOption, SetOption, stage_config
from hoitool.errors import UsageError

FeaturesArgument = typer.Argument(..., help="Features store (.h5 or .zarr) from `hoitool extract features`.")
OutOption = typer.Option(..., "--out", "-o", help="Run directory: new, empty, or a hoitool run of this kind (the same command again resumes it).")
PresetOption = typer.Option(None, "--preset", help="Named recipe: cad120, charades-i3d or demo (docs/training.md).")
SeedOption = typer.Option(None, "--seed", help="Seed of initialisation, batch order and dropout.")
EpochsOption = typer.Option(None, "--epochs", help="Number of epochs.")
LrOption = typer.Option(None, "--lr", help="Initial learning rate.")
BatchOption = typer.Option(None, "--batch-size", help="Global batch size in videos (split across DDP ranks).")
ResumeOption = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint (a finished run: nothing to do); the same command without it resumes too when the config matches.")
DeviceOption = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N.")
AmpOption = typer.Option(None, "--amp/--no-amp", help="Mixed precision (CUDA only; refused on CPU).")
WorkersOption = typer.Option(None, "--workers", help="DataLoader worker processes reading the store.")
ManifestOption = typer.Option(None, "--manifest", help="Manifest to take labels and splits from (default: the one the store was built from).")
LabelOption = typer.Option(None, "--label", help="Name of the run in reports (default: e.g. 'global-context', 'global-teacher').")

_VIEWS = ("global", "local", "baseline")


def _common_options(seed, epochs, lr, batch_size, device, amp, workers, manifest, view) -> dict:
    return {
        "train.seed": seed, "train.epochs": epochs, "optim.lr": lr, "train.batch_size": batch_size,
        "runtime.device": device, "train.amp": amp, "data.workers": workers,
        "data.manifest": str(Path(manifest).resolve()) if manifest else None, "model.view": view,
    }


def _check_view(view: str, allowed: tuple[str, ...]) -> None:
    if view not in allowed:
        raise UsageError(f"--view must be one of {', '.join(allowed)}, got {view!r}")


@app.command("train-teacher")
def train_teacher_command(
    features: Path = FeaturesArgument,
    view: str = typer.Option(..., "--view", help="Context graph: global (whole video), local (per frame) or baseline (no graph)."),
    out: Path = OutOption,
    preset: Optional[str] = PresetOption,
    seed: Optional[int] = SeedOption,
    epochs: Optional[int] = EpochsOption,
    lr: Optional[float] = LrOption,
    batch_size: Optional[int] = BatchOption,
    resume: bool = ResumeOption,
    device: Optional[str] = DeviceOption,
    amp: Optional[bool] = AmpOption,
    workers: Optional[int] = WorkersOption,
    manifest: Optional[Path] = ManifestOption,
    label: Optional[str] = LabelOption,
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Train one context view with the labels (CE or BCE); writes checkpoints, metrics and every video's logits."""
    from hoitool.train.loop import TrainRequest, train
    from hoitool.train.presets import apply_preset, preset_name, training_defaults

    _check_view(view, _VIEWS)
    options = _common_options(seed, epochs, lr, batch_size, device, amp, workers, manifest, view)
    defaults = apply_preset(training_defaults(distill=False), preset_name(preset, config))
    resolved = stage_config(defaults, config, overrides, print_config, options)
    train(TrainRequest("teacher", features, out, resolved, resume=resume, force=force, label=label))


@app.command("distill")
def distill_command(
    features: Path = FeaturesArgument,
    view: str = typer.Option(..., "--view", help="The student's context graph: local or global."),
    out: Path = OutOption,
    teacher: Optional[Path] = typer.Option(None, "--teacher", help="Teacher run directory (from train-teacher); its outputs are checked for staleness."),
    loss: Optional[str] = typer.Option(None, "--loss", help="kd (softmax KL, single-label default), l2 (GLIDN Eq. 3, multi-label default) or bce."),
    temperature: Optional[float] = typer.Option(None, "--T", help="Distillation temperature."),
    lambda1: Optional[float] = typer.Option(None, "--lambda1", help="Weight of the CE/BCE term."),
    lambda2: Optional[float] = typer.Option(None, "--lambda2", help="Weight of the distillation term."),
    generalized: Optional[float] = typer.Option(None, "--generalized", help="Generalized distillation: lambda2 = this, lambda1 = 1 - this."),
    dml: bool = typer.Option(False, "--dml", help="Deep Mutual Learning: train --view and the other view jointly from scratch."),
    preset: Optional[str] = PresetOption,
    seed: Optional[int] = SeedOption,
    epochs: Optional[int] = EpochsOption,
    lr: Optional[float] = LrOption,
    batch_size: Optional[int] = BatchOption,
    resume: bool = ResumeOption,
    device: Optional[str] = DeviceOption,
    amp: Optional[bool] = AmpOption,
    workers: Optional[int] = WorkersOption,
    manifest: Optional[Path] = ManifestOption,
    label: Optional[str] = LabelOption,
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Train a student view with CE + distillation from a teacher's logits (or two views mutually with --dml)."""
    from hoitool.train.artifacts import check_teacher_run
    from hoitool.train.loop import PEER_VIEW, TrainRequest, train
    from hoitool.train.presets import apply_preset, preset_name, training_defaults

    _check_view(view, ("global", "local") if dml else _VIEWS)
    if dml and teacher is not None:
        raise UsageError("--dml trains both views from scratch; drop --teacher")
    if not dml and teacher is None:
        raise UsageError("--teacher RUN is required (or --dml for mutual learning)")
    if generalized is not None and (lambda1 is not None or lambda2 is not None):
        raise UsageError("--generalized sets both lambdas (lambda1 = 1 - lambda2); do not combine it with --lambda1/--lambda2")
    if generalized is not None and not 0.0 <= generalized <= 1.0:
        raise UsageError(f"--generalized must be in [0, 1] (lambda2 = L, lambda1 = 1 - L), got {generalized}")
    if generalized is not None:
        lambda1, lambda2 = 1.0 - generalized, generalized
    options = _common_options(seed, epochs, lr, batch_size, device, amp, workers, manifest, view)
    options.update({"distill.loss": loss, "distill.T": temperature, "distill.lambda1": lambda1,
                    "distill.lambda2": lambda2, "distill.dml": True if dml else None})
    teacher_view = PEER_VIEW[view] if dml else check_teacher_run(teacher).get("view")
    defaults = apply_preset(training_defaults(distill=True), preset_name(preset, config), teacher_view)
    resolved = stage_config(defaults, config, overrides, print_config, options)
    kind = "dml" if resolved["distill"]["dml"] else "student"
    if kind == "dml" and teacher is not None:
        raise UsageError("the config sets distill.dml: true, which trains from scratch; drop --teacher")
    train(TrainRequest(kind, features, out, resolved, teacher=teacher, resume=resume, force=force, label=label))
