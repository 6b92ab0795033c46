"""Stage configuration: defaults < config file (YAML/TOML) < CLI options < ``--set key=value``.

Every stage declares a nested dict of defaults; unknown keys are refused so a
typo never silently does nothing. The resolved config is saved beside every
output (``config.resolved.yaml``) and inside store provenance.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import tomllib
import yaml
from pydantic import BaseModel

from hoitool.errors import UsageError
from hoitool.io.atomic import write_text
from hoitool.settings.base import validate


def load_config_file(path: Path | str) -> dict:
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: config file not found")
    if not path.is_file():
        raise UsageError(f"{path}: is a folder, not a config file (expected a .yaml or .toml file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read config ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text) or {}
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{path}: cannot parse config ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: config must be a mapping of keys to values")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=0.01"`` → ``("train.lr", 0.01)``; the value is parsed as YAML."""
    if "=" not in text:
        raise UsageError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UsageError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def set_dotted(config: dict, key: str, value: Any, where: str) -> None:
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise UsageError(f"{where}: unknown config key {key!r}")
        node = node[part]
    if parts[-1] not in node:
        known = ", ".join(sorted(node))
        raise UsageError(f"{where}: unknown config key {key!r} (known here: {known})")
    node[parts[-1]] = value


def lookup(config: dict, key: str) -> Any:
    """The value at a dotted key, or None where it is missing."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested configs (sorted), e.g. ``["optim.lr"]``."""
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        left, right = old.get(key), new.get(key)
        if isinstance(left, dict) and isinstance(right, dict):
            changed += changed_keys(left, right, f"{prefix}{key}.")
        elif left != right:
            changed.append(f"{prefix}{key}")
    return changed


def merge(config: dict, updates: dict, where: str, prefix: str = "") -> None:
    """Apply a nested mapping of updates onto ``config`` key by key (unknown keys are refused)."""
    for key, value in updates.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(lookup(config, dotted), dict):
            merge(config, value, where, dotted + ".")
        else:
            set_dotted(config, dotted, value, where)


def resolve_config(
    defaults: dict | type[BaseModel],
    config_file: Path | str | None = None,
    options: dict | None = None,
    overrides: Iterable[str] = (),
    schema: type[BaseModel] | None = None,
) -> dict:
    """Build the resolved config in precedence order; ``options`` with value None are ignored.

    ``defaults`` is a nested dict or a stage's settings class (hoitool.settings); with a
    class (or ``schema``), the result is validated against it before it is returned.
    """
    if isinstance(defaults, type):
        schema, defaults = defaults, defaults().model_dump()
    config = copy.deepcopy(defaults)
    if config_file is not None:
        merge(config, load_config_file(config_file), str(config_file))
    for key, value in (options or {}).items():
        if value is not None:
            set_dotted(config, key, value, "option")
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(config, key, value, "--set")
    if schema is not None:
        config = validate(schema, config).model_dump()
    return config


def dump_config(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=True, default_flow_style=False)


def save_config(config: dict, directory: Path | str, name: str = "config.resolved.yaml") -> Path:
    path = Path(directory) / name
    write_text(path, dump_config(config))
    return path
