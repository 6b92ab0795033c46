"""``hoitool text``: a vision-language teacher's text for ``--method cl_hoi`` (docs/vlm-import.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from hoitool.cli import console
from hoitool.cli.app import app

text_app = typer.Typer(help="Captions and triplets of a vision-language teacher (CL-HOI).", no_args_is_help=True)
app.add_typer(text_app, name="text")


@text_app.command("triplets")
def triplets_command(
    source: Path = typer.Argument(..., help="VLM import (JSON lines: video, captions and/or triplets)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="New JSON-lines file: the import with the rules' triplets added."
    ),
) -> None:
    """Fill in triplets from captions by the documented rule set where a video has captions only."""
    from hoitool.text.vlm_import import captions_to_triplets

    counts = captions_to_triplets(source, out)
    console.info(
        f"wrote {out}: {counts['videos']} videos, {counts['filled']} given triplets by the rules, "
        f"{counts['without']} whose captions gave none"
    )


@text_app.command("simulate")
def simulate_command(
    manifest: Path = typer.Argument(..., help="Manifest (manifest.json from hoitool prepare)."),
    out: Path = typer.Option(..., "--out", "-o", help="New JSON-lines import file."),
    error_rate: float = typer.Option(
        0.1, "--error-rate", min=0.0, max=1.0, help="Share of videos given a wrong class."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of which videos are wrong, and how."),
) -> None:
    """Write a stand-in teacher's import from the manifest (captions from its annotation, class names; some wrong)."""
    from hoitool.manifest import Manifest
    from hoitool.text.simulated import simulated_teacher
    from hoitool.text.vlm_import import write_vlm_import

    texts = simulated_teacher(Manifest.load(manifest), error_rate, seed)
    write_vlm_import(texts, out)
    console.info(f"wrote {out}: {len(texts)} videos (a simulated teacher: not a VLM's knowledge)")


@text_app.command("regions")
def regions_command(
    features: Path = typer.Argument(..., help="Features store (its videos, views, boxes and sampled frames)."),
    image_encoder: str = typer.Option(
        ..., "--image-encoder", help="tiny[:DIM] (tests), open_clip:MODEL:WEIGHTS or hf:DIR (local files only)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Region embeddings (.npz; a .json record beside it)."),
    split: list[str] = typer.Option(
        [], "--split", help="Only the videos of this split (repeatable; cl_hoi needs train). Default: every video."
    ),
    device: str = typer.Option("cpu", "--device", help="Where the image encoder runs (auto, cpu, cuda, cuda:1)."),
    force: bool = typer.Option(False, "--force", help="Use a boxes store that changed since the features."),
) -> None:
    """Embed the union box of every (person, object) pair of every sampled frame (CL-HOI's soft-relation regions)."""
    from hoitool.device import resolve_device
    from hoitool.text.image_encoders import load_image_encoder
    from hoitool.text.regions import FORMAT, WHAT, build_region_embeddings, check_ours

    check_ours(out, FORMAT, WHAT)  # a foreign file is refused before the encoder loads
    where = str(resolve_device(device))
    encoder = lambda: load_image_encoder(image_encoder, device=where)  # noqa: E731 - loaded after the store's checks
    info = build_region_embeddings(features, out, encoder, splits=split or None, force=force)
    counts = info["counts"]
    console.info(
        f"{'kept' if info['reused'] else 'wrote'} {out}: {counts['pairs']} pair regions of {counts['videos']} videos "
        f"({info['dim']}-d, {out.stat().st_size / 2**20:.2f} MiB)"
    )
