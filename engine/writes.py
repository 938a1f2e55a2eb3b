"""The hot path's unit of work: a `Write`, and how it becomes the driver's own arguments.

Every `io` step ends in one fenced task write that the job must wait for, and every poll the
scheduler performs ends in a reschedule. Executed through SQLAlchemy, one write costs about
eight thread hand-offs on aiosqlite; each dialect's store instead runs a prepared write through
the driver itself: a whole transaction in one hand-off (SQLite, engine.groupcommit) or one round
trip (PostgreSQL, a single autocommitted statement, engine.store_postgres).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .sql import DriverSQL

_JSON_FIELDS = frozenset(
    {"params", "output", "error", "poll_state", "fields", "rate_limits", "rate_limit_wait"}
)
_TIME_FIELDS = frozenset(
    {
        "due_at",
        "next_poll_at",
        "started_at",
        "completed_at",
        "created_at",
        "recorded_at",
        "ended_at",
    }
)


@dataclass
class Write:
    """One unit of the hot path: the first statement decides (did it change exactly one row?);
    the others run, in the same transaction, only when it did."""

    first: tuple[DriverSQL, dict[str, Any]]
    then: Sequence[tuple[DriverSQL, dict[str, Any]]] = ()


def _args(
    sql: DriverSQL,
    values: dict[str, Any],
    time: Callable[[float], Any],
    as_json: Callable[[Any], Any],
) -> list[Any]:
    out = []
    for name in sql.names:
        value = values[name]
        if value is not None:
            if name in _JSON_FIELDS:
                value = as_json(value)
            elif name in _TIME_FIELDS:
                value = time(value)
        out.append(value)
    return out


Prepared = tuple[tuple[str, list[Any]], list[tuple[str, list[Any]]]]


def prepare(write: Write, time: Callable[[float], Any], as_json: Callable[[Any], Any]) -> Prepared:
    """The write's SQL texts and argument lists, times and JSON as the dialect stores them."""
    sql, values = write.first
    return (sql.text, _args(sql, values, time, as_json)), [
        (s.text, _args(s, v, time, as_json)) for s, v in write.then
    ]
