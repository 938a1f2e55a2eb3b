"""Events and signals: what is checked before anything is written, and how a wait is matched.

An event goes to every run waiting for its name whose `match` it satisfies: each key of the
match is a top-level key of the event's payload with an equal value. A wait is indexed by its
name and a digest of its match (`digest`); a sent event looks up the distinct key sets waits of
its name use, projects its payload onto each and looks up the digests, so the cost of a send
does not grow with the number of runs waiting (docs/triggers.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from . import codec, limits
from .exceptions import EngineError

MAX_NAME_LENGTH = 200
MAX_EVENT_ID_LENGTH = 300
# A match names at most this many keys, each at most this long (the key set is a column).
MAX_MATCH_KEYS = 16
MAX_MATCH_KEY_LENGTH = 50


@dataclass(frozen=True)
class Wait:
    """What a waiting task is indexed by (engine_event_waits)."""

    kind: str  # "event" or "signal"
    name: str
    match_keys: str | None = None
    match_hash: str | None = None
    match_values: dict[str, Any] | None = None


@dataclass(frozen=True)
class SentEvent:
    """What `Engine.send_event` did: the event's id; `created` is False when an event with this
    id was sent before (then nothing was delivered again); the runs it woke and started."""

    id: str
    name: str
    created: bool
    woke: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SentSignal:
    """What `Engine.signal` did: the signal's id (the one given, else a fresh one); `created`
    is False when the run already had a signal with this id (then nothing was sent again);
    `woke` is True when it settled a waiting `io.wait_for_signal` at once (else it is kept)."""

    id: str
    run_id: str
    name: str
    created: bool
    woke: bool = False


def check_name(name: Any, what: str) -> str:
    return limits.check_text(name, what, MAX_NAME_LENGTH, control=True)


def check_event_id(event_id: Any, what: str = "event id") -> str:
    return limits.check_text(event_id, what, MAX_EVENT_ID_LENGTH, control=True)


def send_token() -> str:
    """One per send call, kept across its retries: how a retry recognises its own commit."""
    return uuid.uuid4().hex


def timeout_seconds(timeout: Any, where: str) -> float:
    """A wait's timeout in seconds: a timedelta or a number; None waits the longest a durable
    wait may (limits.MAX_WAIT_SECONDS), so every wait ends."""
    if timeout is None:
        return limits.MAX_WAIT_SECONDS
    if isinstance(timeout, timedelta):
        timeout = timeout.total_seconds()
    return limits.check_seconds(timeout, f"{where} timeout", limits.MAX_WAIT_SECONDS)


def event_wait(name: str, match: Any, where: str) -> Wait:
    """The index entry of a wait for event `name` with `match` (None or {} matches every event
    of that name); a match that cannot be indexed is refused here, before anything is written."""
    if match is None:
        match = {}
    if not isinstance(match, Mapping):
        raise EngineError(
            f"{where} match={match!r}: give a dict of payload keys to values, "
            'e.g. match={"draft_id": 42}'
        )
    if len(match) > MAX_MATCH_KEYS:
        raise EngineError(f"{where} match has {len(match)} keys: use at most {MAX_MATCH_KEYS}")
    for key in match:
        if not isinstance(key, str):
            raise EngineError(f"{where} match key {key!r}: keys are payload keys, give strings")
        limits.check_text(key, f"{where} match key", MAX_MATCH_KEY_LENGTH, control=True)
    values = codec.check(dict(match), f"{where} match")
    keys = keyset(values)
    return Wait("event", name, keys, digest(keys, values), values)


def keyset(values: Mapping[str, Any]) -> str:
    return json.dumps(sorted(values), separators=(",", ":"), ensure_ascii=False)


def project(payload: Any, keys: str) -> dict[str, Any] | None:
    """The payload's values for the key set, or None when the payload lacks one of them."""
    wanted = json.loads(keys)
    if not wanted:
        return {}
    if not isinstance(payload, dict) or any(k not in payload for k in wanted):
        return None
    return {k: payload[k] for k in wanted}


def digest(keys: str, values: Mapping[str, Any]) -> str:
    """What a wait is looked up by: its key set and values, as canonical JSON, hashed."""
    return hashlib.sha256(f"{keys}\x00{canonical(values)}".encode()).hexdigest()


def canonical(value: Any) -> str:
    """JSON text two equal values share: keys sorted, and a whole float written as an integer
    (1.0 matches 1, as in Python; true does not)."""
    return json.dumps(_normal(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _normal(value: Any) -> Any:
    if type(value) is float and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value
