"""``hoitool extract boxes`` and ``hoitool extract features``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from hoitool.cli.app import extract_app
from hoitool.cli.options import ConfigOption, ForceOption, PrintConfigOption, SetOption, ShardOption, stage_config
from hoitool.manifest import parse_shard

WeightsOption = typer.Option(None, "--weights", help="Weights file; default: torchvision's cache (TORCH_HOME); 'random' for tests.")
DeviceOption = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N.")
WorkersOption = typer.Option(None, "--workers", help="DataLoader workers decoding videos ahead of the model.")


@extract_app.command("boxes")
def boxes_command(
    manifest: Path = typer.Argument(..., help="manifest.json (or its folder) from `hoitool prepare`."),
    out: Path = typer.Option(..., "--out", "-o", help="Boxes store to write: .h5 (HDF5) or .zarr (Zarr)."),
    source: Optional[str] = typer.Option(None, "--source", help="rpn | detector | dataset | import."),
    frames: Optional[int] = typer.Option(None, "--frames", "-T", help="Frames sampled uniformly per clip."),
    clips: Optional[int] = typer.Option(None, "--clips", help="Temporal clips per video (views for test-time fusion)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", "-K", help="Boxes kept per frame (best scores)."),
    import_file: Optional[Path] = typer.Option(None, "--import", help="Boxes JSON-lines file for --source import."),
    weights: Optional[str] = WeightsOption,
    device: Optional[str] = DeviceOption,
    workers: Optional[int] = WorkersOption,
    shard: Optional[str] = ShardOption,
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
    print_config: bool = PrintConfigOption,
) -> None:
    """Sample T frames per video and keep the top-K boxes per frame; resumable, shardable, crash-safe."""
    from hoitool.extract.boxes import BOXES_DEFAULTS, extract_boxes
    from hoitool.extract.engine import finish

    options = {
        "source": source, "frames": frames, "clips": clips, "top_k": top_k,
        "import_file": str(import_file) if import_file else None, "model.weights": weights,
        "runtime.device": device, "runtime.workers": workers,
    }
    resolved = stage_config(BOXES_DEFAULTS, config, overrides, print_config, options)
    finish(extract_boxes(manifest, out, resolved, shard=parse_shard(shard), force=force))


def _list_backbones(value: bool) -> None:
    """``--list-backbones``: every arch with its layers (* = default), the default's channels and strides, weights."""
    if not value:
        return
    from hoitool.features.backbones import backbone_table
    from hoitool.features.video_models import INSTALL

    for row in backbone_table():
        default = row["default"]
        layers = " ".join(f"{layer}*" if layer == default else layer for layer in row["layers"])
        note = "" if row["available"] else f"  (not installed: {INSTALL})"
        typer.echo(f"{row['arch']:<18} {row['kind']}  dim {row['dim'][default]:<5} stride {row['stride'][default]:<3}"
                   f"temporal {row['temporal_stride'][default]:<2} layers {layers:<32} weights: {row['weights']}{note}")
    raise typer.Exit()


@extract_app.command("features")
def features_command(
    boxes: Path = typer.Argument(..., help="Boxes store from `hoitool extract boxes`."),
    out: Path = typer.Option(..., "--out", "-o", help="Features store to write: .h5 (HDF5) or .zarr (Zarr)."),
    backbone: Optional[str] = typer.Option(
        None, "--backbone", help="e.g. resnet50, resnet18, r3d_18, i3d_r50, slowfast_r50 (see --list-backbones)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Backbone layer for RoIAlign (default: the last)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="roi (RoIAlign on the feature map) or crop (embed box crops)."),
    pool: Optional[str] = typer.Option(None, "--pool", help="max or avg over the RoIAlign bins."),
    crops: Optional[int] = typer.Option(None, "--crops", help="1 (whole frame) or 3 (left/centre/right) spatial views."),
    weights: Optional[str] = WeightsOption,
    device: Optional[str] = DeviceOption,
    workers: Optional[int] = WorkersOption,
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="Mixed precision on CUDA."),
    shard: Optional[str] = ShardOption,
    force: bool = ForceOption,
    config: Optional[Path] = ConfigOption,
    overrides: List[str] = SetOption,
    print_config: bool = PrintConfigOption,
    list_backbones: bool = typer.Option(False, "--list-backbones", callback=_list_backbones, is_eager=True,
                                        help="Print the backbones, their layers (* = default) and exit."),
) -> None:
    """Backbone + RoIAlign (or box crops) -> one float16 vector per box, per view; resumable, shardable, crash-safe."""
    from hoitool.extract.engine import finish
    from hoitool.extract.features import FEATURES_DEFAULTS, extract_features

    options = {
        "backbone.arch": backbone, "backbone.layer": layer, "backbone.weights": weights, "mode": mode, "pool": pool,
        "crops": crops, "runtime.device": device, "runtime.workers": workers, "runtime.amp": amp,
    }
    resolved = stage_config(FEATURES_DEFAULTS, config, overrides, print_config, options)
    finish(extract_features(boxes, out, resolved, shard=parse_shard(shard), force=force))
