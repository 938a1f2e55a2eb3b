"""How a wait is indexed and an event matched (engine.events), without a database."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine import EngineError, limits
from engine.events import canonical, digest, event_wait, project, timeout_seconds


def test_an_event_matches_a_wait_through_the_digest_of_its_projection() -> None:
    wait = event_wait("draft.reviewed", {"draft_id": 42, "lang": "en"}, "io.wait_for_event('r')")
    assert wait.match_keys == '["draft_id","lang"]'
    payload = {"lang": "en", "draft_id": 42.0, "approved": True}
    values = project(payload, wait.match_keys)
    assert values == {"draft_id": 42.0, "lang": "en"}
    assert digest(wait.match_keys, values) == wait.match_hash
    # A missing key, another value, or another JSON type is no match.
    assert project({"draft_id": 42}, wait.match_keys) is None
    for other in ({"draft_id": "42", "lang": "en"}, {"draft_id": True, "lang": "en"}):
        assert digest(wait.match_keys, other) != wait.match_hash


def test_an_empty_match_matches_every_payload() -> None:
    wait = event_wait("ping", None, "w")
    assert wait.match_values == {} and wait.match_keys == "[]"
    for payload in ({}, {"a": 1}, [1, 2], "text"):
        assert digest("[]", project(payload, "[]") or {}) == wait.match_hash


def test_canonical_json_sorts_keys_and_writes_whole_floats_as_integers() -> None:
    assert canonical({"b": [1.0, 2.5], "a": {"y": 1, "x": 2}}) == '{"a":{"x":2,"y":1},"b":[1,2.5]}'


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("draft", "give a dict of payload keys to values"),
        ({1: 2}, "keys are payload keys, give strings"),
        ({f"k{i}": i for i in range(17)}, "use at most 16"),
        ({"when": object()}, "match"),
    ],
)
def test_a_match_that_cannot_be_indexed_is_refused(match: object, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        event_wait("e", match, "io.wait_for_event('r')")


def test_a_timeout_is_a_timedelta_or_seconds_and_is_bounded() -> None:
    assert timeout_seconds(timedelta(days=3), "w") == 3 * 86400
    assert timeout_seconds(None, "w") == limits.MAX_WAIT_SECONDS
    with pytest.raises(EngineError, match="timeout"):
        timeout_seconds(-1, "w")
    with pytest.raises(EngineError, match="timeout"):
        timeout_seconds(timedelta(days=400), "w")
