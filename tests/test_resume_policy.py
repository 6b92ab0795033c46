"""hoitool.resume's decision table, cell by cell (the table in the module docstring), and its refusals' wording."""

from __future__ import annotations

import logging

import pytest

from hoitool.errors import StaleArtifactError, UsageError
from hoitool.resume import Decision, Place, Record, Request, decide, describe_changes, would_skip

CONFIG = {"optim": {"lr": 0.01, "name": "adam"}, "seed": 0}
OTHER = {"optim": {"lr": 0.02, "name": "adam"}, "seed": 0}
UP = {"features store f.h5": "aaa"}
MOVED = {"features store f.h5": "bbb"}
PLACE = Place("out", "teacher run", remedy="use --force to start over")
FRESH, CONTINUE, REPLACE, DONE = Decision.FRESH, Decision.CONTINUE, Decision.REPLACE, Decision.DONE
CONFIG_REFUSED, STALE = UsageError, StaleArtifactError

# what is asked: the same work, another config, or the same config from a changed upstream
ASKED = {"same": (CONFIG, UP), "config": (OTHER, UP), "upstream": (CONFIG, MOVED)}
UNFINISHED, FINISHED = Record(CONFIG, UP), Record(CONFIG, UP, finished=True)
TABLE = [  # (recorded, place, force, resume) -> outcome for same / config / upstream
    (None, PLACE, False, False, (FRESH, FRESH, FRESH)),
    (None, PLACE, True, True, (FRESH, FRESH, FRESH)),
    (Record(CONFIG, UP, saved=False), PLACE, False, False, (REPLACE, REPLACE, REPLACE)),
    (Record(CONFIG, UP, saved=False), PLACE, False, True, (REPLACE, REPLACE, REPLACE)),
    (FINISHED, PLACE, False, False, (DONE, CONFIG_REFUSED, STALE)),
    (UNFINISHED, PLACE, False, False, (CONTINUE, CONFIG_REFUSED, STALE)),
    (UNFINISHED, PLACE, True, False, (REPLACE, REPLACE, REPLACE)),
    (FINISHED, PLACE, True, False, (REPLACE, REPLACE, REPLACE)),
    (UNFINISHED, Place("s.h5", "features store", redo=False), True, False, (CONTINUE, REPLACE, REPLACE)),
    (FINISHED, Place("s.h5", "features store", redo=False), True, False, (DONE, REPLACE, REPLACE)),
    (UNFINISHED, PLACE, False, True, (CONTINUE, CONFIG_REFUSED, STALE)),
    (UNFINISHED, PLACE, True, True, (CONTINUE, CONFIG_REFUSED, CONTINUE)),
    (FINISHED, PLACE, True, True, (DONE, CONFIG_REFUSED, DONE)),
]


@pytest.mark.parametrize("asked", ["same", "config", "upstream"])
@pytest.mark.parametrize("recorded, place, force, resume, outcomes", TABLE)
def test_every_cell_of_the_decision_table(recorded, place, force, resume, outcomes, asked):
    config, upstream = ASKED[asked]
    expected = outcomes[list(ASKED).index(asked)]
    request = Request(config, upstream, force=force, resume=resume)
    if isinstance(expected, Decision):
        assert decide(place, recorded, request) is expected
        assert would_skip(place, recorded, request) is (expected is DONE)
    else:
        with pytest.raises(expected) as refusal:
            decide(place, recorded, request)
        assert type(refusal.value) is expected and "\n" not in str(refusal.value)
        assert not would_skip(place, recorded, request)


def test_a_changed_config_names_the_place_the_keys_and_the_remedy():
    with pytest.raises(UsageError) as refusal:
        decide(PLACE, UNFINISHED, Request(OTHER, UP))
    assert str(refusal.value) == (
        "out: refusing to resume the teacher run: it was made with a different config (optim.lr changed); "
        "use --force to start over"
    )
    valued = Place("out", "teacher run", remedy="add --force", values=True)
    with pytest.raises(UsageError, match=r"different config \(optim\.lr: 0\.01 -> 0\.02\); add --force$"):
        decide(valued, UNFINISHED, Request(OTHER, UP))


def test_a_changed_upstream_is_stale_with_both_fingerprints_and_its_own_remedy():
    place = Place("last.pt", "teacher run", remedy="same options", stale_remedy="--resume --force continues anyway")
    with pytest.raises(StaleArtifactError) as refusal:
        decide(place, UNFINISHED, Request(CONFIG, MOVED))
    assert str(refusal.value) == (
        "last.pt: refusing to resume the teacher run: its features store f.h5 changed since it was made "
        "(aaa -> bbb); --resume --force continues anyway"
    )


def test_resume_force_on_a_changed_upstream_continues_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="hoitool"):
        assert decide(PLACE, UNFINISHED, Request(CONFIG, MOVED, force=True, resume=True)) is CONTINUE
    assert "out: its features store f.h5 changed since it was made (aaa -> bbb); resuming anyway (--force)" in (
        caplog.text
    )


def test_a_store_refuses_a_changed_config_as_stale():
    store = Place("f.h5", "features store", redo=False, refusal=StaleArtifactError)
    with pytest.raises(StaleArtifactError, match="f.h5: refusing to resume the features store: .*seed changed"):
        decide(store, Record({"seed": 0}), Request({"seed": 1}))


def test_kind_and_unknown_config():
    dataset = Place("m.json", "prepared dataset", verb="overwrite", kind="dataset")
    with pytest.raises(
        UsageError, match="m.json: refusing to overwrite the prepared dataset: it holds dataset 'folder', not 'ssv2'"
    ):
        decide(dataset, Record(CONFIG, kind="folder", finished=True), Request(CONFIG, kind="ssv2"))
    unknown = Record(None, kind="folder", missing="config.resolved.yaml missing", finished=True)
    with pytest.raises(UsageError, match=r"made with an unknown config \(config.resolved.yaml missing\)"):
        decide(dataset, unknown, Request(CONFIG, kind="folder"))
    # no config recorded and none expected (training judges by last.pt's record next): not compared
    assert decide(PLACE, Record(None, UP), Request(CONFIG, UP)) is CONTINUE
    # only the upstream recorded is compared (training's first look, before last.pt is read)
    assert decide(PLACE, Record(CONFIG), Request(CONFIG, MOVED)) is CONTINUE


def test_describe_changes():
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": 4}
    new = {"a": 9, "b": {"c": 2, "d": 5}, "e": 6}
    assert describe_changes(old, new) == "a, b.d, e changed"
    assert describe_changes(old, new, limit=2) == "a, b.d and 1 more changed"
    assert describe_changes(old, new, values=True, limit=2) == "a: 1 -> 9; b.d: 3 -> 5 and 1 more"
