"""``hoitool extract boxes`` and ``hoitool extract features``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import typer

from hoitool.boxes.registry import list_box_sources
from hoitool.cli.app import extract_app
from hoitool.cli.options import (
    ConfigOption,
    ForceOption,
    PrintConfigOption,
    SetOption,
    ShardOption,
    setting,
    setting_values,
    stage_config,
)
from hoitool.manifest import parse_shard
from hoitool.settings.boxes import BoxesSettings
from hoitool.settings.features import FeaturesSettings


@extract_app.command("boxes")
def boxes_command(
    manifest: Path = typer.Argument(..., help="manifest.json (or its folder) from `hoitool prepare`."),
    out: Path = typer.Option(..., "--out", "-o", help="Boxes store to write: .h5 (HDF5) or .zarr (Zarr)."),
    source: Optional[str] = setting(
        BoxesSettings, "source", "--source", metavar="[" + "|".join(list_box_sources()) + "]"
    ),
    frames: Optional[int] = setting(BoxesSettings, "frames", "--frames", "-T"),
    clips: Optional[int] = setting(BoxesSettings, "clips", "--clips"),
    top_k: Optional[int] = setting(BoxesSettings, "top_k", "--top-k", "-K"),
    import_file: Optional[Path] = setting(BoxesSettings, "import_file", "--import"),
    weights: Optional[str] = setting(BoxesSettings, "model.weights", "--weights"),
    device: Optional[str] = setting(BoxesSettings, "runtime.device", "--device"),
    workers: Optional[int] = setting(BoxesSettings, "runtime.workers", "--workers"),
    shard: Optional[str] = ShardOption,
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Sample T frames per video and keep the top-K boxes per frame; resumable, shardable, crash-safe."""
    from hoitool.extract.boxes import extract_boxes
    from hoitool.extract.engine import finish

    resolved = stage_config(BoxesSettings, config, overrides, print_config, setting_values(boxes_command, locals()))
    finish(extract_boxes(manifest, out, resolved, shard=parse_shard(shard), force=force))


def _list_backbones(value: bool) -> None:
    """``--list-backbones``: every arch, its default layer (video: all layers, * = default) and its weights file.

    2D archs come from torchvision's model registry (any traced node or module is a ``--layer``);
    a row is printed as soon as it is known (each 2D default is found by building the network on
    the meta device).
    """
    if not value:
        return
    from hoitool.features.backbones import backbone_table, supported_backbones
    from hoitool.features.video_models import INSTALL

    typer.echo("weights: default files are read from $TORCH_HOME/hub/checkpoints/ (never downloaded)")
    for arch in supported_backbones():
        (row,) = backbone_table([arch])
        weights = f"weights: {row['weights']} ({row['source']})"
        if row["kind"] == "2d":
            default = row["default"] or "(found when built)"
            typer.echo(f"{arch:<22} 2d  layer {default:<14} {weights}")
            continue
        default, spec = row["default"], row["specs"][row["default"]]
        layers = " ".join(f"{layer}*" if layer == default else layer for layer in row["layers"])
        note = "" if row["available"] else f"  (not installed: {INSTALL})"
        typer.echo(
            f"{arch:<22} 3d  layer {default:<14} dim {spec.dim:<5} stride {spec.stride:<3}"
            f"temporal {spec.temporal_stride:<2} layers {layers:<28} {weights}{note}"
        )
    raise typer.Exit()


@extract_app.command("features")
def features_command(
    boxes: Path = typer.Argument(..., help="Boxes store from `hoitool extract boxes`."),
    out: Path = typer.Option(..., "--out", "-o", help="Features store to write: .h5 (HDF5) or .zarr (Zarr)."),
    backbone: Optional[str] = setting(FeaturesSettings, "backbone.arch", "--backbone"),
    layer: Optional[str] = setting(FeaturesSettings, "backbone.layer", "--layer"),
    mode: Optional[Literal["roi", "crop"]] = setting(FeaturesSettings, "mode", "--mode"),
    pool: Optional[Literal["max", "avg"]] = setting(FeaturesSettings, "pool", "--pool"),
    crops: Optional[int] = setting(FeaturesSettings, "crops", "--crops"),
    frame_maps: Optional[bool] = setting(FeaturesSettings, "frame_maps", "--frame-maps/--no-frame-maps"),
    weights: Optional[str] = setting(FeaturesSettings, "backbone.weights", "--weights"),
    device: Optional[str] = setting(FeaturesSettings, "runtime.device", "--device"),
    workers: Optional[int] = setting(FeaturesSettings, "runtime.workers", "--workers"),
    amp: Optional[bool] = setting(FeaturesSettings, "runtime.amp", "--amp/--no-amp"),
    shard: Optional[str] = ShardOption,
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: list[str] = SetOption,
    print_config: bool = PrintConfigOption,
    list_backbones: bool = typer.Option(
        False,
        "--list-backbones",
        callback=_list_backbones,
        is_eager=True,
        help="Print the backbones (torchvision's registry and the video models), default layers, weights files; exit.",
    ),
) -> None:
    """Backbone + RoIAlign (or box crops) -> one float16 vector per box, per view; resumable, shardable, crash-safe."""
    from hoitool.extract.engine import finish
    from hoitool.extract.features import extract_features

    resolved = stage_config(
        FeaturesSettings, config, overrides, print_config, setting_values(features_command, locals())
    )
    finish(extract_features(boxes, out, resolved, shard=parse_shard(shard), force=force))
