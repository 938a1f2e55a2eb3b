"""The hot path: small writes, committed in groups through the database driver itself.

Every `io` step ends in one fenced task write that the job must wait for, and every poll the
scheduler performs ends in a reschedule. Executed through SQLAlchemy, one write costs about
eight thread hand-offs on aiosqlite; here a whole transaction is one hand-off (SQLite) or one
round trip (PostgreSQL, a single autocommitted statement). On SQLite, writes that arrive while
a commit is in flight are committed together in the next one, so many concurrent runs share
transactions without any run getting ahead of its own commit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from .sql import DriverSQL

_JSON_FIELDS = frozenset({"params", "output", "error", "poll_state", "fields"})
_TIME_FIELDS = frozenset({"due_at", "next_poll_at", "started_at", "completed_at", "created_at"})

Translate = Callable[[BaseException], BaseException]
T = TypeVar("T")


@dataclass
class Write:
    """One unit of the hot path: the first statement decides (did it change exactly one row?);
    the others run, in the same transaction, only when it did."""

    first: tuple[DriverSQL, dict[str, Any]]
    then: Sequence[tuple[DriverSQL, dict[str, Any]]] = ()


def _sqlite_time(stamp: float) -> str:
    # The text SQLAlchemy's SQLite DateTime stores, so both paths read back alike.
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _pg_time(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


def _args(sql: DriverSQL, values: dict[str, Any], time: Callable[[float], Any]) -> list[Any]:
    out = []
    for name in sql.names:
        value = values[name]
        if value is not None:
            if name in _JSON_FIELDS:
                value = json.dumps(value, separators=(",", ":"))
            elif name in _TIME_FIELDS:
                value = time(value)
        out.append(value)
    return out


Prepared = tuple[tuple[str, list[Any]], list[tuple[str, list[Any]]]]


def _prepare(write: Write, time: Callable[[float], Any]) -> Prepared:
    sql, values = write.first
    return (sql.text, _args(sql, values, time)), [
        (s.text, _args(s, v, time)) for s, v in write.then
    ]


def _sqlite_commit(db: sqlite3.Connection, batch: list[Prepared]) -> list[bool]:
    """Runs in aiosqlite's thread: one transaction for the whole batch."""
    db.execute("BEGIN IMMEDIATE")
    try:
        results = []
        for (sql, args), then in batch:
            written = db.execute(sql, args).rowcount == 1
            if written:
                for more_sql, more_args in then:
                    db.execute(more_sql, more_args)
            results.append(written)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return results


async def in_sqlite_thread(driver: Any, fn: Callable[..., T], *args: Any) -> T:
    """Runs `fn(sqlite3_connection, *args)` in aiosqlite's own thread, in one hand-off.

    aiosqlite has no public API for this; `_execute` and `_conn` have been stable for years, and
    pyproject pins the versions this was tested with. Where they are missing, say so plainly.
    """
    execute, connection = getattr(driver, "_execute", None), getattr(driver, "_conn", None)
    if execute is None or connection is None:
        raise RuntimeError(
            "this aiosqlite version lacks Connection._execute/_conn, which the engine's hot "
            "path uses: install an aiosqlite version within the range pyproject.toml gives"
        )
    result: T = await execute(fn, connection, *args)
    return result


class GroupCommit:
    """SQLite: `await submit(write)` says whether the first statement changed one row, once the
    write is committed."""

    def __init__(self, engine: AsyncEngine, translate: Translate) -> None:
        self.engine = engine
        self.translate = translate
        self._queue: list[tuple[Write, asyncio.Future[bool]]] = []
        self._draining = False

    async def submit(self, write: Write) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((write, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await self._flush([write for write, _ in batch])
                except BaseException as exc:  # every writer in the batch hears of it
                    error = self.translate(exc)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), ok in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(ok)
        finally:
            self._draining = False

    async def _flush(self, batch: list[Write]) -> list[bool]:
        prepared = [_prepare(write, _sqlite_time) for write in batch]
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection  # aiosqlite.Connection
            # aiosqlite's own queue to its thread: the whole transaction in one hand-off.
            result: list[bool] = await in_sqlite_thread(driver, _sqlite_commit, prepared)
            return result


async def direct_write(engine: AsyncEngine, write: Write, translate: Translate) -> bool:
    """PostgreSQL: one write on its own connection; one round trip when it is one statement."""
    (sql, args), then = _prepare(write, _pg_time)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection  # asyncpg.Connection
            if not then:
                # One statement is its own transaction.
                return str(await driver.execute(sql, *args)).endswith(" 1")
            async with driver.transaction():
                written = str(await driver.execute(sql, *args)).endswith(" 1")
                if written:
                    for more_sql, more_args in then:
                        await driver.execute(more_sql, *more_args)
                return written
    except Exception as exc:
        raise translate(exc) from exc
