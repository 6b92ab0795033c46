"""The common base of stage settings and their one-line validation errors."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from hoitool.errors import UsageError

M = TypeVar("M", bound=BaseModel)


class Section(BaseModel):
    """A config section: unknown keys refused, strict types (YAML and typer already give typed values)."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


def _split_loc(schema: type[BaseModel], loc: tuple) -> tuple[str, bool]:
    """The dotted config key of an error location, and whether it is a section (not a value).

    Pydantic adds the member of a union to the location (``data.preload.bool``); only
    the parts that are fields of the schema make the key.
    """
    node: type[BaseModel] | None = schema
    parts: list[str] = []
    for part in loc:
        if node is None or str(part) not in node.model_fields:
            break
        parts.append(str(part))
        node = _model_in(node.model_fields[str(part)].annotation)
    return ".".join(parts), node is not None and len(parts) == len(loc)


def _known(schema: type[BaseModel], key: str) -> str:
    """The keys a section knows, for an 'unknown key' message."""
    node: type[BaseModel] | None = schema
    for part in key.split(".")[:-1] if key else []:
        node = _model_in(node.model_fields[part].annotation) if node is not None else None
    return ", ".join(sorted(node.model_fields)) if node is not None else ""


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X`` or ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _requirement(problem: ErrorDetails) -> str:
    """'must be ...' from one pydantic problem."""
    message = problem["msg"]
    if problem["type"] in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping of keys to values (a config section)"
    if problem["type"] == "literal_error":
        return f"must be {problem['ctx']['expected']}"
    if message.startswith("Input should be"):
        return "must be" + message[len("Input should be") :]
    if message.startswith("Value error, "):
        return message[len("Value error, ") :]
    return message


def one_line(error: ValidationError, schema: type[BaseModel], where: str) -> str:
    """The first problem of a ValidationError as one line: key, value, what is allowed."""
    problems = error.errors()
    first = problems[0]
    full_key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        known = _known(schema, full_key)
        return f"{where}: unknown config key {full_key!r}" + (f" (known here: {known})" if known else "")
    key, is_section = _split_loc(schema, first["loc"])
    same = [problem for problem in problems if _split_loc(schema, problem["loc"])[0] == key]  # the members of a union
    requirement = " or ".join(dict.fromkeys(_requirement(problem) for problem in same))
    requirement = requirement.replace(" or must be ", " or ")
    rest = len({_split_loc(schema, problem["loc"])[0] for problem in problems}) - 1
    more = f" (and {rest} more problem{'s' if rest > 1 else ''})" if rest else ""
    if (
        is_section and first["type"] == "value_error"
    ) or not key:  # a check across keys (e.g. hidden a multiple of heads)
        return f"{where}: {requirement}{more}"
    return f"{where}: config key {key!r} = {first.get('input')!r}: {requirement}{more}"


def validate(schema: type[M], data: dict, where: str = "") -> M:
    """``data`` as a ``schema`` instance, or a UsageError (exit 2) naming the first bad key."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        message = one_line(exc, schema, where or "config")
        raise UsageError(message if where else message[len("config: ") :]) from None


def resolved(schema: type[M], config: dict | BaseModel) -> dict:
    """A stage's config as the library uses it: validated against ``schema``, as a plain nested dict.

    Library entry points call this, so a notebook may pass a settings instance, a full dict or
    a partial one (missing keys take their defaults); a bad value is refused before any work.
    """
    if isinstance(config, BaseModel):
        config = config.model_dump()
    return validate(schema, config).model_dump()


def field_info(schema: type[BaseModel], key: str) -> FieldInfo:
    """The field at a dotted key (``"optim.lr"``) of a nested schema."""
    node: type[BaseModel] | None = schema
    parts = key.split(".")
    for part in parts[:-1]:
        node = _model_in(node.model_fields[part].annotation) if node is not None else None
    if node is None or parts[-1] not in node.model_fields:
        raise KeyError(f"{schema.__name__} has no config key {key!r}")
    return node.model_fields[parts[-1]]


def describe(schema: type[BaseModel], key: str) -> str:
    """A key's description, as written once in its schema."""
    return field_info(schema, key).description or ""


def option_help(schema: type[BaseModel], key: str) -> str:
    """``--help`` text of the option that sets ``key``: its description, the key and its default."""
    info = field_info(schema, key)
    default = info.get_default(call_default_factory=True)
    shown = "none" if default is None else str(default).lower() if isinstance(default, bool) else str(default)
    return f"{info.description or ''} [config: {key}; default: {shown}]".strip()
