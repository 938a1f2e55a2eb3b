"""SQLite's hot path: small writes, committed in groups through the driver itself.

A whole transaction is one hand-off to aiosqlite's thread (see engine.writes). Writes that
arrive while a commit is in flight are committed together in the next one, so many concurrent
runs share transactions without any run getting ahead of its own commit. (PostgreSQL writes
concurrently, each write on its own: engine.store_postgres.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from . import codec
from .dberrors import invalidate_if_broken
from .writes import Prepared, Write, prepare

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

Translate = Callable[[BaseException], BaseException]
T = TypeVar("T")


def _sqlite_time(stamp: float) -> str:
    # The text SQLAlchemy's SQLite DateTime stores, so both paths read back alike.
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _sqlite_apply(db: sqlite3.Connection, prepared: Prepared) -> bool:
    (sql, args), then = prepared
    written = db.execute(sql, args).rowcount == 1
    if written:
        for more_sql, more_args in then:
            db.execute(more_sql, more_args)
    return written


def sqlite_rollback(db: sqlite3.Connection) -> None:
    # SQLite rolls back by itself on some errors (SQLITE_FULL, some IOERRs): a ROLLBACK then
    # fails with "no transaction is active" and would hide the real error.
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _sqlite_commit(db: sqlite3.Connection, batch: list[Prepared]) -> list[bool]:
    """Runs in aiosqlite's thread: one transaction for the whole batch."""
    db.execute("BEGIN IMMEDIATE")
    try:
        results = [_sqlite_apply(db, prepared) for prepared in batch]
        db.execute("COMMIT")
    except BaseException:
        sqlite_rollback(db)
        raise
    return results


def _sqlite_commit_each(db: sqlite3.Connection, batch: list[Prepared]) -> list[bool | Exception]:
    """Runs in aiosqlite's thread: each write in its own transaction, so that the one the
    database refuses fails alone."""
    outcomes: list[bool | Exception] = []
    for prepared in batch:
        try:
            outcomes.append(_sqlite_commit(db, [prepared])[0])
        except Exception as exc:
            outcomes.append(exc)
    return outcomes


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
                    outcomes = await self._commit([write for write, _ in batch])
                except BaseException as exc:  # every writer in the batch hears of it
                    error = self.translate(exc)
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(self.translate(outcome))
                    else:
                        future.set_result(outcome)
        finally:
            self._draining = False

    async def _commit(self, batch: list[Write]) -> list[bool | Exception]:
        """One outcome per write. A write that cannot be prepared, or that the database refuses
        for good, fails alone; a transient failure (locked, full) fails the whole batch."""
        outcomes: list[bool | Exception] = []
        prepared: list[Prepared] = []
        for write in batch:
            try:
                prepared.append(prepare(write, _sqlite_time, codec.sqlite_param))
                outcomes.append(True)
            except Exception as exc:  # an unstorable value: its own writer's failure
                outcomes.append(exc)
        if not prepared:
            return outcomes
        results: list[bool | Exception]
        try:
            results = await self._flush(_sqlite_commit, prepared)
        except Exception as exc:
            if len(prepared) == 1 or _is_transient(self.translate(exc)):
                results = [exc] * len(prepared)
            else:
                # A permanent refusal: find the guilty write by committing them one by one.
                results = await self._flush(_sqlite_commit_each, prepared)
        it = iter(results)
        return [next(it) if o is True else o for o in outcomes]

    async def _flush(self, fn: Callable[..., list[Any]], prepared: list[Prepared]) -> list[Any]:
        async with self.engine.connect() as conn:
            try:
                raw = await conn.get_raw_connection()
                driver: Any = raw.driver_connection  # aiosqlite.Connection
                # aiosqlite's own queue to its thread: the whole transaction in one hand-off.
                return await in_sqlite_thread(driver, fn, prepared)
            except Exception as exc:
                await invalidate_if_broken(conn, exc)
                raise


def _is_transient(error: BaseException) -> bool:
    return bool(getattr(error, "transient", False))
