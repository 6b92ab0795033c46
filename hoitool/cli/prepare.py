"""``hoitool prepare <dataset> --out OUT``: one subcommand per registered preparer (docs/datasets.md).

The subcommands are made from :mod:`hoitool.datasets.registry`: each top-level field of a
preparer's settings schema is one option (``--video-dir`` for ``video_dir``, declared once, in the
schema); the config resolves as defaults < --config < options < --set and is validated before
anything is written. The policy (prepare once, refuse a different config unless ``--force``, own
only hoitool's files) is the library's :func:`hoitool.datasets.common.prepare_dataset`; this module
only turns options into a config and prints the summary.
"""

from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel
from rich.table import Table

from hoitool.cli import console
from hoitool.cli.app import prepare_app
from hoitool.cli.options import ConfigOption, ForceOption, PrintConfigOption, SetOption, setting, stage_config
from hoitool.datasets.common import ANNOTATIONS_FILE, MANIFEST_FILE, WARNINGS_FILE, prepare_dataset
from hoitool.datasets.registry import Preparer, get_preparer, list_preparers
from hoitool.errors import UsageError
from hoitool.manifest import SPLITS, Manifest

OutOption = typer.Option(
    None,
    "--out",
    "-o",
    help="Output folder for manifest.json (and annotations.jsonl where the dataset has boxes) (required).",
)
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def frames_per_video(manifest: Manifest) -> str:
    """min / median / max of the counted frames, so a doubled count (depth images read as frames) shows."""
    from statistics import median

    counts = sorted(video.num_frames for video in manifest.videos if video.num_frames is not None)
    if not counts:
        return "not counted (video files: decoded at extraction)"
    uncounted = len(manifest.videos) - len(counts)
    return f"{counts[0]} / {median(counts):g} / {counts[-1]} (min / median / max)" + (
        f", {uncounted} not counted" if uncounted else ""
    )


def summary_table(manifest: Manifest, out: Path) -> Table:
    counts = Counter(video.split for video in manifest.videos)
    has_boxes = any(video.annotations for video in manifest.videos)
    skipped = int(manifest.extra.get("skipped_videos", 0))
    table = Table(title=f"{manifest.dataset} -> {out / MANIFEST_FILE}", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for split in SPLITS:
        table.add_row(f"{split} videos", str(counts.get(split, 0)))
    table.add_row("classes", f"{manifest.num_classes} ({'multi' if manifest.multilabel else 'single'}-label)")
    table.add_row("frames per video", frames_per_video(manifest))
    table.add_row("boxes", f"yes ({ANNOTATIONS_FILE})" if has_boxes else "no")
    table.add_row("skipped", f"{skipped} (see {WARNINGS_FILE})" if skipped else "0")
    return table


# -- options from a settings schema ------------------------------------------
def _option_type(annotation: Any, is_path: bool) -> tuple[Any, bool]:
    """The option's Python type for a field's annotation, and whether its text is read as YAML.

    ``X | None`` is ``X``; ``list[X]`` is a repeatable option; a union of several kinds
    (``str | float``: a subject or a fraction) takes text that is read as YAML, as ``--set`` does.
    """
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (str,)
        return list[Path] if is_path else list[item], False  # type: ignore[valid-type]
    kinds = [arg for arg in get_args(annotation) if arg is not type(None)] if get_origin(annotation) else []
    if kinds and get_origin(annotation) is not Literal:
        if len(kinds) > 1:
            return str, True
        annotation = kinds[0]
    return (Path if is_path else annotation), False


def _options(schema: type[BaseModel]) -> list[tuple[inspect.Parameter, str, bool]]:
    """One keyword parameter per top-level field (nested sections: --config/--set only), with its key and YAML flag."""
    found = []
    for key, field in schema.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        kind, as_yaml = _option_type(field.annotation, bool(extra.get("path")))
        flag = str(extra.get("flag") or "--" + key.replace("_", "-"))
        if kind is bool and "/" not in flag:
            flag = f"{flag}/--no-{flag[2:]}"
        info = setting(schema, key, flag)
        found.append(
            (inspect.Parameter(f"setting_{key}", _KEYWORD, default=info, annotation=Optional[kind]), key, as_yaml)
        )
    return found


def _config_value(value: Any, as_yaml: bool) -> Any:
    """An option's value as the config holds it: paths absolute, text of a union read as YAML, [] as not given."""
    if isinstance(value, Path):
        return str(value.absolute())
    if isinstance(value, list):
        return [_config_value(item, False) for item in value] or None
    if as_yaml and isinstance(value, str):
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value
    return value


def _out(name: str, out: Path | None, extra: list[str]) -> Path | None:
    """``--out``; a positional OUT (the old form, left in ``extra``) is a usage error that shows the form to use."""
    if extra:
        raise UsageError(
            f"prepare {name} takes its output as an option now: hoitool prepare {name} --out {extra[0]}"
            + (f" (and got extra arguments {' '.join(extra[1:])!r})" if extra[1:] else "")
        )
    return out


def prepare_command(preparer: Preparer) -> Any:
    """The Typer command of one preparer: --out, its settings' options, --force and the config options."""
    options = _options(preparer.settings)

    def command(**values: Any) -> None:
        out = _out(preparer.name, values["out"], values["context"].args)
        given = {key: _config_value(values[parameter.name], as_yaml) for parameter, key, as_yaml in options}
        config = stage_config(
            preparer.settings, values["config_file"], values["overrides"], values["print_config"], given
        )
        if out is None:
            raise UsageError(f"prepare {preparer.name}: missing --out OUT (the folder to write the manifest to)")
        console.stdout.print(summary_table(prepare_dataset(preparer.name, out, config, values["force"]), out))

    parameters = [
        inspect.Parameter("context", _KEYWORD, annotation=typer.Context),
        inspect.Parameter("out", _KEYWORD, default=OutOption, annotation=Optional[Path]),
        *(parameter for parameter, _, _ in options),
        inspect.Parameter("force", _KEYWORD, default=ForceOption, annotation=bool),
        inspect.Parameter("config_file", _KEYWORD, default=ConfigOption, annotation=Optional[Path]),
        inspect.Parameter("overrides", _KEYWORD, default=SetOption, annotation=list[str]),
        inspect.Parameter("print_config", _KEYWORD, default=PrintConfigOption, annotation=bool),
    ]
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
    command.__name__ = f"prepare_{preparer.name}"
    command.__doc__ = preparer.summary
    return command


def add_prepare_commands(group: typer.Typer, names: list[str] | None = None) -> None:
    """Add ``group <name>`` for each registered preparer (all of them by default)."""
    for name in list_preparers() if names is None else names:
        # extra arguments are collected (not refused by click) so that an old positional OUT gets its own message
        group.command(name, context_settings={"allow_extra_args": True})(prepare_command(get_preparer(name)))


add_prepare_commands(prepare_app)
