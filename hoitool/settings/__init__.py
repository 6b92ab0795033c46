"""Typed settings of every stage: one schema per stage, its defaults and their meaning in one place.

Each stage's schema is a pydantic model (``hoitool.settings.<stage>``). A config is
resolved in the usual precedence (defaults < preset < ``--config`` < options < ``--set``)
as a plain nested dict, then validated against the schema before any work starts
(:func:`hoitool.settings.base.validate`): a wrong type, an out-of-range value, an
unknown key or an unknown choice is one line naming the key, the value and what is
allowed. Why pydantic: typer already brings typed signatures, pydantic gives strict
types, ranges and ``Literal`` choices with readable errors, and its field descriptions
feed the CLI's ``--help`` so an option is described once (docs/configuration.md).
"""

from hoitool.settings.base import Section, describe, option_help, resolved, validate

__all__ = ["Section", "describe", "option_help", "resolved", "validate"]
