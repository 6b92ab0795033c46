"""``hoitool train-teacher`` and ``hoitool distill``: thin wrappers around :mod:`hoitool.train.loop`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from hoitool.cli.app import app
from hoitool.cli.options import (
    ConfigOption,
    ForceOption,
    PrintConfigOption,
    SetOption,
    setting,
    setting_values,
    stage_config,
)
from hoitool.errors import UsageError
from hoitool.settings.training import DistillStageSettings, TeacherSettings

FeaturesArgument = typer.Argument(..., help="Features store (.h5 or .zarr) from `hoitool extract features`.")
OutOption = typer.Option(
    ...,
    "--out",
    "-o",
    help="Run directory: new, empty, or a hoitool run of this kind (the same command again resumes it).",
)
PresetOption = typer.Option(None, "--preset", help="Named recipe: cad120, charades-i3d or demo (docs/training.md).")
ResumeOption = typer.Option(
    False,
    "--resume",
    help="Continue the run in --out from its last checkpoint (a finished run: nothing to do); the same command without it resumes too when the config matches.",
)
LabelOption = typer.Option(
    None, "--label", help="Name of the run in reports (default: e.g. 'global-context', 'global-teacher')."
)
S = DistillStageSettings  # every training option sets a key of this schema (train-teacher uses its teacher part)
DA = {"rich_help_panel": "dual attention (--method dual_attention)"}  # its settings, in a panel of their own
View = Literal["global", "local", "baseline"]


def _check_view(view: str, allowed: tuple[str, ...]) -> None:
    if view not in allowed:
        raise UsageError(f"--view must be one of {', '.join(allowed)}, got {view!r}")


@app.command("train-teacher")
def train_teacher_command(
    features: Path = FeaturesArgument,
    view: View = typer.Option(
        ..., "--view", help="Context graph: global (whole video), local (per frame) or baseline (no graph)."
    ),
    out: Path = OutOption,
    preset: Optional[str] = PresetOption,
    method: Optional[str] = setting(S, "method.name", "--method"),  # the schema checks the name against the registry
    seed: Optional[int] = setting(S, "train.seed", "--seed"),
    epochs: Optional[int] = setting(S, "train.epochs", "--epochs"),
    lr: Optional[float] = setting(S, "optim.lr", "--lr"),
    batch_size: Optional[int] = setting(S, "train.batch_size", "--batch-size"),
    da_regions: Optional[Literal["nodes", "cells"]] = setting(S, "dual_attention.regions", "--regions", **DA),
    da_temporal: Optional[Literal["trn", "mean"]] = setting(S, "dual_attention.temporal", "--temporal-head", **DA),
    da_slots: Optional[int] = setting(S, "dual_attention.object_slots", "--object-slots", **DA),
    da_hidden: Optional[int] = setting(S, "dual_attention.hidden", "--da-hidden", **DA),
    da_prior: Optional[int] = setting(S, "dual_attention.prior_hidden", "--prior-hidden", **DA),
    da_attention: Optional[int] = setting(S, "dual_attention.attention_dim", "--attention-dim", **DA),
    da_head: Optional[int] = setting(S, "dual_attention.head_hidden", "--head-hidden", **DA),
    da_order: Optional[int] = setting(S, "dual_attention.trn_max_order", "--trn-max-order", **DA),
    da_tuples: Optional[int] = setting(S, "dual_attention.trn_max_tuples", "--trn-max-tuples", **DA),
    da_dropout: Optional[float] = setting(S, "dual_attention.dropout", "--da-dropout", **DA),
    da_first: Optional[float] = setting(S, "dual_attention.first_weight", "--first-weight", **DA),
    da_object: Optional[float] = setting(S, "dual_attention.object_weight", "--object-weight", **DA),
    resume: bool = ResumeOption,
    device: Optional[str] = setting(S, "runtime.device", "--device"),
    amp: Optional[bool] = setting(S, "train.amp", "--amp/--no-amp"),
    tensorboard: Optional[bool] = setting(S, "train.tensorboard", "--tensorboard/--no-tensorboard"),
    workers: Optional[int] = setting(S, "data.workers", "--workers"),
    manifest: Optional[Path] = setting(S, "data.manifest", "--manifest"),
    save_embeddings: Optional[bool] = setting(S, "train.embeddings", "--save-embeddings/--no-save-embeddings"),
    vlm_import: Optional[Path] = setting(S, "cl_hoi.vlm_import", "--vlm-import"),
    text_encoder: Optional[str] = setting(S, "cl_hoi.text_encoder", "--text-encoder"),
    text_embeddings: Optional[Path] = setting(S, "cl_hoi.text_embeddings", "--text-embeddings"),
    label_free: Optional[bool] = setting(S, "cl_hoi.label_free", "--label-free/--with-labels"),
    w_context: Optional[float] = setting(S, "cl_hoi.w_context", "--w-context"),
    w_i2t: Optional[float] = setting(S, "cl_hoi.w_i2t", "--w-i2t"),
    w_t2i: Optional[float] = setting(S, "cl_hoi.w_t2i", "--w-t2i"),
    w_sr: Optional[float] = setting(S, "cl_hoi.w_sr", "--w-sr"),
    region_embeddings: Optional[Path] = setting(S, "cl_hoi.regions", "--region-embeddings"),
    label: Optional[str] = LabelOption,
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Train one context view with the labels (CE or BCE); writes checkpoints, metrics and every video's logits."""
    from hoitool.train.loop import TrainRequest, train
    from hoitool.train.presets import apply_preset, preset_name, training_defaults

    options = dict(setting_values(train_teacher_command, locals()), **{"model.view": view})
    defaults = apply_preset(training_defaults(distill=False), preset_name(preset, config))
    resolved = stage_config(defaults, config, overrides, print_config, options, schema=TeacherSettings)
    train(TrainRequest("teacher", features, out, resolved, resume=resume, force=force, label=label))


@app.command("distill")
def distill_command(
    features: Path = FeaturesArgument,
    view: View = typer.Option(
        ..., "--view", help="The student's context graph (global or local with --dml; baseline too with --teacher)."
    ),
    out: Path = OutOption,
    teacher: Optional[Path] = typer.Option(
        None, "--teacher", help="Teacher run directory (from train-teacher); its outputs are checked for staleness."
    ),
    loss: Optional[str] = setting(S, "distill.loss", "--loss"),  # the schema checks the name against the registry
    temperature: Optional[float] = setting(S, "distill.T", "--T"),
    lambda1: Optional[float] = setting(S, "distill.lambda1", "--lambda1"),
    lambda2: Optional[float] = setting(S, "distill.lambda2", "--lambda2"),
    generalized: Optional[float] = typer.Option(
        None, "--generalized", help="Generalized distillation: lambda2 = this, lambda1 = 1 - this."
    ),
    dml: bool = typer.Option(
        False, "--dml", help="Deep Mutual Learning: train --view and the other view jointly from scratch."
    ),
    preset: Optional[str] = PresetOption,
    method: Optional[str] = setting(S, "method.name", "--method"),  # the schema checks the name against the registry
    seed: Optional[int] = setting(S, "train.seed", "--seed"),
    epochs: Optional[int] = setting(S, "train.epochs", "--epochs"),
    lr: Optional[float] = setting(S, "optim.lr", "--lr"),
    batch_size: Optional[int] = setting(S, "train.batch_size", "--batch-size"),
    resume: bool = ResumeOption,
    device: Optional[str] = setting(S, "runtime.device", "--device"),
    amp: Optional[bool] = setting(S, "train.amp", "--amp/--no-amp"),
    tensorboard: Optional[bool] = setting(S, "train.tensorboard", "--tensorboard/--no-tensorboard"),
    workers: Optional[int] = setting(S, "data.workers", "--workers"),
    manifest: Optional[Path] = setting(S, "data.manifest", "--manifest"),
    lead_time: Optional[str] = setting(S, "anticipation.lead_time", "--lead-time"),
    anticipate_at: Optional[str] = setting(S, "anticipation.at", "--anticipate-at"),
    unlabelled: Optional[Path] = setting(S, "anticipation.unlabelled", "--unlabelled"),
    anticipation_loss: Optional[str] = setting(S, "anticipation.loss", "--anticipation-loss"),
    penalty: Optional[str] = setting(S, "anticipation.penalty", "--penalty"),
    lambda_d: Optional[float] = setting(S, "anticipation.lam", "--lambda-d"),
    vlm_import: Optional[Path] = setting(S, "cl_hoi.vlm_import", "--vlm-import"),
    text_encoder: Optional[str] = setting(S, "cl_hoi.text_encoder", "--text-encoder"),
    text_embeddings: Optional[Path] = setting(S, "cl_hoi.text_embeddings", "--text-embeddings"),
    label_free: Optional[bool] = setting(S, "cl_hoi.label_free", "--label-free/--with-labels"),
    w_context: Optional[float] = setting(S, "cl_hoi.w_context", "--w-context"),
    w_i2t: Optional[float] = setting(S, "cl_hoi.w_i2t", "--w-i2t"),
    w_t2i: Optional[float] = setting(S, "cl_hoi.w_t2i", "--w-t2i"),
    w_sr: Optional[float] = setting(S, "cl_hoi.w_sr", "--w-sr"),
    region_embeddings: Optional[Path] = setting(S, "cl_hoi.regions", "--region-embeddings"),
    label: Optional[str] = LabelOption,
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Train a student view with CE + distillation from a teacher's logits (or two views mutually with --dml)."""
    from hoitool.train.loop import PEER_VIEW, TrainRequest, train
    from hoitool.train.presets import apply_preset, preset_name, training_defaults
    from hoitool.train.teacher import check_teacher_run

    _check_view(view, ("global", "local") if dml else ("global", "local", "baseline"))
    if dml and teacher is not None:
        raise UsageError("--dml trains both views from scratch; drop --teacher")
    if not dml and teacher is None:
        raise UsageError("--teacher RUN is required (or --dml for mutual learning)")
    if generalized is not None and (lambda1 is not None or lambda2 is not None):
        raise UsageError(
            "--generalized sets both lambdas (lambda1 = 1 - lambda2); do not combine it with --lambda1/--lambda2"
        )
    if generalized is not None and not 0.0 <= generalized <= 1.0:
        raise UsageError(f"--generalized must be in [0, 1] (lambda2 = L, lambda1 = 1 - L), got {generalized}")
    if generalized is not None:
        lambda1, lambda2 = 1.0 - generalized, generalized
    options = dict(
        setting_values(distill_command, locals()), **{"model.view": view, "distill.dml": True if dml else None}
    )
    teacher_view = PEER_VIEW[view] if teacher is None else check_teacher_run(teacher).get("view")  # None: --dml
    defaults = apply_preset(training_defaults(distill=True), preset_name(preset, config), teacher_view)
    resolved = stage_config(defaults, config, overrides, print_config, options, schema=DistillStageSettings)
    kind = "dml" if resolved["distill"]["dml"] else "student"
    if kind == "dml" and teacher is not None:
        raise UsageError("the config sets distill.dml: true, which trains from scratch; drop --teacher")
    train(TrainRequest(kind, features, out, resolved, teacher=teacher, resume=resume, force=force, label=label))
