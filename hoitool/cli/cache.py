"""``hoitool cache info|verify|merge|compact``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from hoitool.cli import console
from hoitool.cli.app import cache_app
from hoitool.errors import HoitoolError


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{size} B"
        size /= 1024
    return str(size)


@cache_app.command("info")
def info_command(
    path: Path = typer.Argument(..., help="A boxes or features store (.h5 / .zarr)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Videos done/failed, array shapes and dtypes, bytes on disk, provenance."""
    from hoitool.store.reader import describe_partial
    from hoitool.store.tools import store_info

    info = store_info(path)
    if as_json:
        console.stdout.print_json(json.dumps(info, default=str))
        return
    table = Table(title=f"{path} ({info['kind']} store, schema {info['schema_version']})", show_header=False)
    provenance = info["provenance"]
    rows = [
        ("fingerprint", info["fingerprint"]),
        ("videos done", str(info["videos_done"])),
        ("videos failed", str(info["videos_failed"])),
        ("unfinished parts", str(info["unfinished_parts"])),
        *((("partial", f"yes: {describe_partial(info['partial'])}"),) if info["partial"] else ()),
        *(
            (("unreadable videos", f"{len(info['videos_unreadable'])} (run `hoitool cache verify {path}`)"),)
            if info["videos_unreadable"]
            else ()
        ),
        ("segments", f"{info['segments']} ({info['files']} files, {info['files_per_video'] or 0:.4f} per video)"),
        ("codec", json.dumps(info["codec"], sort_keys=True)),
        ("bytes on disk", f"{_human(info['bytes_on_disk'])} ({info['bytes_on_disk']} B)"),
        ("uncompressed", f"{_human(info['bytes_uncompressed'])} (ratio {info['compression_ratio'] or 0:.2f}x)"),
        *(
            (f"array {name}", f"{info['dtypes'][name]} {' '.join(map(str, shapes))}")
            for name, shapes in info["shapes"].items()
        ),
        *(
            (key, str(info[key]))
            for key in ("source", "frames", "clips", "views", "num_frames", "max_boxes", "dim")
            if info.get(key) is not None
        ),
        ("stage", str(provenance.get("stage"))),
        ("manifest", str(provenance.get("manifest"))),
        ("upstream", json.dumps(provenance.get("upstream"))),
        ("weights", json.dumps(provenance.get("weights"))),
        ("code version", str(provenance.get("code_version"))),
        ("code commit", str(provenance.get("code_commit"))),
        ("config", json.dumps(provenance.get("config"), sort_keys=True)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.stdout.print(table)
    for record in info["failed"][:10]:
        console.stdout.print(f"  failed {record['video']}: {record['error']}", markup=False)


@cache_app.command("verify")
def verify_command(path: Path = typer.Argument(..., help="A boxes or features store (.h5 / .zarr).")) -> None:
    """Read every video: finite values, consistent shapes, content equal to its recorded digest."""
    from hoitool.store.tools import verify_store

    problems = verify_store(path)
    for problem in problems:
        console.stdout.print(problem, markup=False)
    if problems:
        raise HoitoolError(f"{path}: {len(problems)} problems found")
    console.info(f"[green]ok[/green] {path}: every video readable, finite and consistent")


@cache_app.command("compact")
def compact_command(path: Path = typer.Argument(..., help="A boxes or features store (.h5 / .zarr).")) -> None:
    """Rewrite a store into one segment (and an old single-file store into segments), crash-safely."""
    from hoitool.store.tools import compact_store

    meta = compact_store(path)
    console.info(
        f"[green]compacted[/green] {path}: {meta['num_videos']} videos in {meta['num_segments']} segment(s), "
        f"fingerprint {meta['fingerprint']}"
    )


@cache_app.command("merge")
def merge_command(
    shards: list[Path] = typer.Argument(..., help="Shard stores written with --shard i/n (every i of one n)."),
    out: Path = typer.Option(..., "--out", "-o", help="Merged store (.h5 or .zarr)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing merged store (only a hoitool store)."),
    allow_partial: bool = typer.Option(
        False, "--allow-partial", help="Merge an incomplete set of shards; the result is marked partial."
    ),
) -> None:
    """Merge a complete set of shard stores into one store identical to a single run."""
    from hoitool.store.reader import describe_partial
    from hoitool.store.tools import merge_stores

    meta = merge_stores(shards, out, force=force, allow_partial=allow_partial)
    if meta.get("unchanged"):
        console.info(
            f"{out}: already merged from these {len(shards)} stores, nothing to do "
            f"({meta['num_videos']} videos, fingerprint {meta['fingerprint']})"
        )
        return
    console.info(
        f"[green]merged[/green] {len(shards)} stores -> {out} ({meta['num_videos']} videos, fingerprint {meta['fingerprint']})"
    )
    if meta.get("partial"):
        console.info(f"[yellow]warning:[/yellow] {out} is marked partial ({describe_partial(meta['partial'])})")
