"""The hot path: task writes, committed in groups through the database driver itself.

Every `io` step ends in one fenced task write that the job must wait for. Executed through
SQLAlchemy, one write costs about eight thread hand-offs on aiosqlite; here a whole transaction
is one hand-off (SQLite) or one round trip (PostgreSQL, a single autocommitted statement). On
SQLite, writes that arrive while a commit is in flight are committed together in the next one,
so many concurrent runs share transactions without any run getting ahead of its own commit.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from .records import LogWrite, TaskWrite
from .sql import DriverSQL, Statements

_JSON_FIELDS = frozenset({"params", "output", "error", "poll_state", "fields"})
_TIME_FIELDS = frozenset({"due_at", "next_poll_at", "started_at", "completed_at", "created_at"})


@dataclass
class Write:
    run_id: str
    epoch: int
    task: TaskWrite
    logs: Sequence[LogWrite]


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


def _sqlite_commit(
    db: sqlite3.Connection,
    task_sql: str,
    log_sql: str,
    batch: list[tuple[list[Any], list[list[Any]]]],
) -> list[bool]:
    """Runs in aiosqlite's thread: one transaction for the whole batch."""
    db.execute("BEGIN IMMEDIATE")
    try:
        results = []
        for task_args, log_args in batch:
            written = db.execute(task_sql, task_args).rowcount == 1
            if written and log_args:
                db.executemany(log_sql, log_args)
            results.append(written)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return results


class GroupCommit:
    """SQLite: `await submit(write)` is True once committed, False when the lease was lost."""

    def __init__(
        self,
        engine: AsyncEngine,
        sql: Statements,
        translate: Callable[[BaseException], BaseException],
    ) -> None:
        self.engine = engine
        self.sql = sql
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
                    results = await self._flush_sqlite([write for write, _ in batch])
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

    async def _flush_sqlite(self, batch: list[Write]) -> list[bool]:
        rows = [_rows(self.sql, write, _sqlite_time) for write in batch]
        async with self.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection  # aiosqlite.Connection
            # aiosqlite's own queue to its thread: the whole transaction in one hand-off.
            result: list[bool] = await driver._execute(
                _sqlite_commit,
                driver._conn,
                self.sql.raw_write_task.text,
                self.sql.raw_write_log.text,
                rows,
            )
            return result


def _rows(
    sql: Statements, write: Write, time: Callable[[float], Any]
) -> tuple[list[Any], list[list[Any]]]:
    task = {"run_id": write.run_id, "epoch": write.epoch, **write.task.__dict__}
    logs = [
        _args(sql.raw_write_log, {"run_id": write.run_id, **log.__dict__}, time)
        for log in write.logs
    ]
    return _args(sql.raw_write_task, task, time), logs


async def direct_write(
    engine: AsyncEngine,
    sql: Statements,
    write: Write,
    translate: Callable[[BaseException], BaseException],
) -> bool:
    """PostgreSQL: one task write on its own connection, one round trip without logs."""
    task_args, log_args = _rows(sql, write, _pg_time)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection  # asyncpg.Connection
            if not log_args:
                # One statement is its own transaction.
                return str(await driver.execute(sql.raw_write_task.text, *task_args)).endswith(" 1")
            async with driver.transaction():
                written = str(await driver.execute(sql.raw_write_task.text, *task_args))
                if written.endswith(" 1"):
                    await driver.executemany(sql.raw_write_log.text, log_args)
                return written.endswith(" 1")
    except Exception as exc:
        raise translate(exc) from exc
