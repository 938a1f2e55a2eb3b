"""Limits on what a job may ask for, checked at the call, before anything is written.

A refused input is one EngineError naming the call and the limit; it never reaches the database
(where a too-long key or a NUL would be refused mid-transaction, and an infinite wait would fail
the SQLite group commit it shares with other runs). docs/concepts.md, "What can be recorded",
lists them.
"""

from __future__ import annotations

import math
from typing import Any

from .exceptions import EngineError

# Lengths of the columns that hold them (engine/schema.py).
MAX_KEY_LENGTH = 500
MAX_NAME_LENGTH = 300
MAX_IDEMPOTENCY_KEY_LENGTH = 300
MAX_JOB_ID_LENGTH = 200
MAX_VERSION_LENGTH = 100

# The longest durable wait and task timeout: far beyond any real use, well within what a
# timestamp column and asyncio's timers handle.
MAX_WAIT_SECONDS = 366 * 24 * 3600.0
MAX_TASK_TIMEOUT = 366 * 24 * 3600.0


def check_text(value: Any, what: str, max_length: int, *, control: bool = False) -> str:
    """A non-empty string of at most `max_length` characters, without NUL or lone surrogates
    (and, with `control`, without any control character: keys are shown and joined in paths)."""
    if is_plain(value, max_length):  # every step checks its key and name: keep that cheap
        return value  # type: ignore[no-any-return]
    if not isinstance(value, str) or not value:
        raise EngineError(f"{what} {value!r}: give a non-empty string")
    if len(value) > max_length:
        raise EngineError(
            f"{what} {value[:40]!r}... is {len(value)} characters long: use at most {max_length}"
        )
    if "\x00" in value or (control and not value.isprintable() and _has_control(value)):
        raise EngineError(f"{what} {value!r}: control characters (NUL, newline...) are not allowed")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise EngineError(
                f"{what} {value!r}: holds a lone surrogate, which is not valid Unicode"
            ) from None
    return value


def is_plain(value: Any, max_length: int) -> bool:
    """The common case, in C: printable ASCII (so no NUL, control character or surrogate)."""
    return (
        type(value) is str
        and 0 < len(value) <= max_length
        and value.isascii()
        and value.isprintable()
    )


def _has_control(value: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in value)


def check_seconds(value: Any, what: str, maximum: float, *, zero: bool = True) -> float:
    """A finite number of seconds, >= 0 (> 0 unless `zero`), at most `maximum`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EngineError(f"{what}={value!r}: give a number of seconds")
    seconds = float(value)
    low_ok = seconds >= 0 if zero else seconds > 0
    if not (math.isfinite(seconds) and low_ok and seconds <= maximum):
        bound = ">= 0" if zero else "> 0"
        raise EngineError(
            f"{what}={value!r}: give a finite number of seconds {bound} and at most "
            f"{maximum:.0f} ({maximum / 86400:.0f} days)"
        )
    return seconds
