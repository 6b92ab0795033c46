"""The one resume/refuse policy: may a stage continue the work at its output, start over, or must it refuse?

Stores (:mod:`hoitool.store.staging`), prepared datasets (:mod:`hoitool.datasets.common`) and training
runs (:mod:`hoitool.train.state`) all ask it before any work, with what was recorded at the output (its
config and the fingerprints of what it was made from) and what is asked now. Whether the output is
hoitool's at all is not asked here: the callers' ownership checks (markers, ``store.ownership``) come first.

=====================================  ==========  ==========================  ============================
recorded at ``where``                  same        config (or kind) differs    upstream changed
=====================================  ==========  ==========================  ============================
nothing                                fresh       fresh                       fresh
a start that kept nothing (``saved``)  replace     replace                     replace
finished work                          done        refuse                      refuse
unfinished work                        continue    refuse                      refuse
 ... with ``force``                    replace     replace                     replace
 ... with ``force``, ``redo=False``    as above    replace                     replace
 ... with ``resume`` (+ ``force``)     continue    refuse (refuse)             refuse (continue, warned)
=====================================  ==========  ==========================  ============================

``redo=False`` (stores): ``force`` only replaces work that does not match, since matching work would be
redone identically. ``resume`` (training's ``--resume``) asks to keep the work: a changed config is then
always refused, and ``force`` only lets it continue from changed upstream artifacts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hoitool import log
from hoitool.config import changed_keys, lookup
from hoitool.errors import HoitoolError, StaleArtifactError, UsageError


class Decision(str, Enum):
    FRESH = "fresh"  # nothing there: start
    CONTINUE = "continue"  # the same work, unfinished (or kept on purpose): carry on from it
    REPLACE = "replace"  # delete hoitool's files there, then start
    DONE = "done"  # the same work, finished: the caller may skip it


@dataclass(frozen=True)
class Place:
    """An output a stage may resume, and how its refusals are worded.

    ``what`` names it (``"features store"``, ``"prepared dataset"``, ``"teacher run"``); ``remedy`` ends a
    refusal of a changed config and ``stale_remedy`` one of a changed upstream (default: ``remedy``).
    """

    where: Path | str
    what: str
    remedy: str = "use --force to start over"
    stale_remedy: str | None = None
    verb: str = "resume"  # "refusing to <verb> the <what>"
    kind: str = "kind"  # what Record.kind is, in a refusal ("dataset")
    redo: bool = True  # force also redoes matching work (prepare, training); a store keeps it
    values: bool = False  # name the old and new value of each changed key (configs of short values)
    refusal: type[HoitoolError] = UsageError  # the error of a changed config (stores: StaleArtifactError)


@dataclass(frozen=True)
class Record:
    """What an earlier run left at the place.

    ``config`` None: none recorded; refused as unknown when ``missing`` says why one should be there,
    else not compared (training compares its checkpoint's record next). ``upstream``: name -> fingerprint
    of what it was made from (only the names recorded are compared).
    """

    config: dict | None = None
    upstream: Mapping[str, Any] = field(default_factory=dict)
    kind: str | None = None
    missing: str | None = None
    saved: bool = True  # False: a start that kept nothing worth continuing (training without last.pt)
    finished: bool = False


@dataclass(frozen=True)
class Request:
    """What is asked now: the config and upstream fingerprints the work would be made with."""

    config: dict | None = None
    upstream: Mapping[str, Any] = field(default_factory=dict)
    kind: str | None = None
    force: bool = False
    resume: bool = False  # training's explicit --resume: keep the work there


def decide(place: Place, recorded: Record | None, asked: Request) -> Decision:
    """The decision of the module's table; a refusal is one line naming the place, what changed and the remedy."""
    if recorded is None:
        return Decision.FRESH
    if not recorded.saved or (asked.force and place.redo and not asked.resume):
        return Decision.REPLACE
    changed = _config_change(place, recorded, asked)
    if changed:
        if asked.force and not asked.resume:
            return Decision.REPLACE
        raise place.refusal(f"{place.where}: refusing to {place.verb} the {place.what}: {changed}; {place.remedy}")
    stale = _upstream_change(recorded, asked)
    if stale:
        if not asked.force:
            raise StaleArtifactError(
                f"{place.where}: refusing to {place.verb} the {place.what}: {stale}; {place.stale_remedy or place.remedy}"
            )
        if not asked.resume:
            return Decision.REPLACE
        log.warning(f"{place.where}: {stale}; resuming anyway (--force)")
    return Decision.DONE if recorded.finished else Decision.CONTINUE


def would_skip(place: Place, recorded: Record | None, asked: Request) -> bool:
    """Whether :func:`decide` says DONE (no refusal raised): for a caller that may skip before its ownership check."""
    try:
        return decide(place, recorded, asked) is Decision.DONE
    except HoitoolError:
        return False


def _config_change(place: Place, recorded: Record, asked: Request) -> str | None:
    """Why the recorded work is not what is asked (kind, config), or None."""
    if recorded.kind != asked.kind:
        return f"it holds {place.kind} {recorded.kind!r}, not {asked.kind!r}"
    if recorded.config is None:
        return f"it was made with an unknown config ({recorded.missing})" if recorded.missing else None
    if recorded.config == asked.config:
        return None
    return (
        f"it was made with a different config ({describe_changes(recorded.config, asked.config or {}, place.values)})"
    )


def _upstream_change(recorded: Record, asked: Request) -> str | None:
    for name, fingerprint in recorded.upstream.items():
        now = asked.upstream.get(name)
        if now != fingerprint:
            return f"its {name} changed since it was made ({fingerprint} -> {now})"
    return None


def describe_changes(old: dict, new: dict, values: bool = False, limit: int = 5) -> str:
    """``"seed, val changed"``, or with ``values`` ``"optim.lr: 0.01 -> 0.02"``; at most ``limit`` keys."""
    keys = changed_keys(old, new)
    shown = keys[:limit]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    if values:
        return "; ".join(f"{key}: {lookup(old, key)!r} -> {lookup(new, key)!r}" for key in shown) + more
    return f"{', '.join(shown) or 'its layout'}{more} changed"
