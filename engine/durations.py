"""Durations as users give them: a `timedelta` or seconds in Python, `90s`, `10m`, `2h`, `1d`
or `1h30m` on the command line (`engine trigger --delay/--timeout`)."""

from __future__ import annotations

import re
from datetime import timedelta

from .exceptions import EngineError

# Bounded, so a typo cannot schedule something a century away (INVARIANTS 7).
MAX_SECONDS = 10 * 365 * 86400.0
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")


def seconds(value: timedelta | float | int | None, what: str) -> float | None:
    """A positive duration (a timedelta or seconds) as seconds, or None."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        total = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        total = float(value)
    else:
        raise EngineError(f"{what}={value!r}: give a timedelta or a number of seconds")
    if not 0 < total <= MAX_SECONDS:
        raise EngineError(f"{what}={value!r}: give a duration above 0 and at most 10 years")
    return total


def parse(text: str, what: str) -> float:
    """`90s`, `10m`, `2h`, `1d`, `1h30m` (or plain seconds) as seconds."""
    stripped = text.strip().lower()
    total: float | None = None
    if re.fullmatch(r"\d+(\.\d+)?", stripped):
        total = float(stripped)
    elif stripped and _PART.sub("", stripped) == "":
        total = sum(float(n) * _UNITS[u] for n, u in _PART.findall(stripped))
    if total is None:
        raise EngineError(f"{what} {text!r}: give a duration such as 90s, 10m, 2h, 1d or 1h30m")
    checked = seconds(total, what)
    assert checked is not None
    return checked
