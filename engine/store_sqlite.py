"""The store on SQLite: one connection, writes committed in groups, a file watched for news.

SQLite has one writer: concurrent writes share transactions (engine.groupcommit). It has no
NOTIFY either: a worker notices another process's commits by watching the file's
`PRAGMA data_version`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import event
from sqlalchemy.engine import URL

from . import codec
from .dberrors import SqliteErrors, invalidate_if_broken
from .exceptions import DatabaseError, EngineError
from .groupcommit import GroupCommit, _sqlite_time, in_sqlite_thread, sqlite_rollback
from .outage import backoff
from .records import ChunkWrite, TaskRow
from .sa_async import create_async_engine
from .sql import DriverSQL
from .store import Store
from .writes import Write

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

# The wake-up side task reports as part of the worker loop.
wake_log = logging.getLogger("engine.scheduler")

# SQLite's busy timeout, unless the URL says `?timeout=SECONDS`.
DEFAULT_BUSY_TIMEOUT = 30.0


class SQLiteStore(Store):
    is_postgres = False
    errors = SqliteErrors
    idle_poll = 1.0
    # Read connections issue no BEGIN (see _on_begin): each SELECT is its own read transaction.
    read_options: ClassVar[dict[str, Any]] = {"engine_read": True}
    # No NOTIFY: a follower in another process reads again this often (an indexed read,
    # outside any transaction: it never holds the writers up).
    stream_poll = 0.05

    def __init__(self, database_url: str | None = None, *, pool_size: int = 10) -> None:
        super().__init__(database_url, pool_size=pool_size)
        # SQLite has one writer: group concurrent writes into shared transactions.
        self._group = GroupCommit(self.engine, self._translate)

    def missing_file(self) -> str | None:
        path = self.parsed_url.database
        if not path or path == ":memory:" or os.path.exists(path):
            return None
        return path

    def _make_engine(self, url: URL, pool_size: int) -> AsyncEngine:
        given: Any = url.query.get("timeout", DEFAULT_BUSY_TIMEOUT)
        try:
            busy_timeout = float(given)
            if not 0 <= busy_timeout <= 3600:
                raise ValueError(busy_timeout)
        except (TypeError, ValueError):
            raise DatabaseError(
                f"database URL ?timeout={given!r}: give SQLite's busy timeout "
                "in seconds, 0 to 3600, e.g. ?timeout=30"
            ) from None
        # One connection: SQLite has one writer anyway, and queueing in the pool is far cheaper
        # than SQLite's sleep-and-retry busy handler.
        engine = create_async_engine(
            url,
            pool_size=1,
            max_overflow=0,
            pool_timeout=120,
            # Every use of a connection ends in COMMIT or ROLLBACK (store.begin, the hot path),
            # so the pool's own rollback on return would only cost a thread hand-off per
            # transaction.
            pool_reset_on_return=None,
            connect_args={"timeout": busy_timeout},
            json_serializer=codec.sqlite_param,
            json_deserializer=codec.loads,
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # We issue BEGIN ourselves (IMMEDIATE, below); the driver must not.
            dbapi_conn.isolation_level = None
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a commit survives a process crash (kill -9); see docs/concepts.md.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            if conn.get_execution_options().get("engine_read"):
                return  # Database.read(): reads only, no lock taken
            # Take the write lock up front: a deferred transaction that upgrades later can fail
            # with "database is locked" instead of waiting its turn.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine

    async def _hot(self, write: Write) -> bool:
        return await self._group.submit(write)

    async def _write_chunks(self, run_id: str, epoch: int, chunks: Sequence[ChunkWrite]) -> bool:
        # One write of the group commit (it shares its transaction with other runs' writes):
        # the fence, then the whole batch in one statement (engine.sql_streams).
        sql = self._stream_sql
        rows = codec.dumps(
            [
                [c.stream, c.seq, c.task, c.attempt, c.n, c.data, c.number, _chunk_time(c)]
                for c in chunks
            ]
        )
        batch = {"run_id": run_id, "rows": rows}
        return await self._group.submit(
            Write(
                (sql.raw_fence, {"run_id": run_id, "epoch": epoch}), [(sql.raw_insert_batch, batch)]
            )
        )

    async def read_chunks(
        self, run_id: str, stream: str, after: int, limit: int
    ) -> tuple[str | None, list[tuple[Any, ...]]]:
        sql = self._stream_sql
        args = {"run_id": run_id, "stream": stream, "after": after, "limit": limit}
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    status, rows = await in_sqlite_thread(
                        driver, _read_chunks, sql.raw_status, sql.raw_read, args
                    )
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc
        return status, [
            (seq, task, attempt, _json(data), _time(at), restart)
            for seq, task, attempt, data, at, restart in rows
        ]

    async def write_returning(
        self, sql: DriverSQL, values: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    return await in_sqlite_thread(driver, _write_returning, sql.text, values)
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc

    async def _read_replay_rows(self, driver: Any, run_id: str) -> tuple[list[Any], list[Any]]:
        tasks_sql, logs_sql = self._sql.raw_load_tasks.text, self._sql.raw_load_log_keys.text
        return await in_sqlite_thread(driver, _read, tasks_sql, logs_sql, {"run_id": run_id})

    def _task_row(self, row: tuple[Any, ...]) -> TaskRow:
        (
            parent,
            key,
            kind,
            name,
            status,
            attempts,
            output,
            output_type,
            error,
            due_at,
            seq,
            base,
            wait,
        ) = row
        # JSON text and UTC timestamps as SQLite stores them
        output, error, wait = _json(output), _json(error), _json(wait)
        due_at = None if due_at is None else datetime.fromisoformat(due_at).replace(tzinfo=UTC)
        return TaskRow(parent, key, kind, name, status, attempts, output, output_type, error,
                       due_at, seq, base, wait)  # fmt: skip

    async def data_version(self) -> int:
        """A number that changes when another process commits (no NOTIFY here)."""
        return int(await self._read_value("PRAGMA data_version", {}))

    async def _any_expired(self, now: float) -> bool:
        # Outside any transaction: a sweep with nothing due never takes the write lock
        # (store.begin is BEGIN IMMEDIATE), which every other writer would wait for.
        sql = self._sql.raw_any_expired.text
        return bool(await self._read_value(sql, {"now": _sqlite_time(now)}))

    async def _any_ready(self, now: float, job_keys: Sequence[str]) -> bool:
        # Outside any transaction, like the sweep's: an idle worker's claim never takes the
        # write lock. A run made ready after this read wakes the worker (data_version, the
        # local wake) or falls due at a time next_due reports, so the next loop claims it.
        assert self._sql.raw_any_ready is not None  # SQLite's statements have it
        sql = self._sql.raw_any_ready.text
        args = {"now": _sqlite_time(now), "job_keys": codec.dumps(list(job_keys))}
        return bool(await self._read_value(sql, args))

    async def _any_poll_due(self, now: float, pollers: Sequence[str]) -> bool:
        assert self._sql.raw_any_poll_due is not None  # SQLite's statements have it
        sql = self._sql.raw_any_poll_due.text
        args = {"now": _sqlite_time(now), "pollers": codec.dumps(list(pollers))}
        return bool(await self._read_value(sql, args))

    async def _read_value(self, sql: str, args: dict[str, Any]) -> Any:
        """The first column of the first row of a read, outside any transaction."""
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    return await in_sqlite_thread(driver, _read_value, sql, args)
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc

    def watch(self, hear: Callable[..., None]) -> asyncio.Task[None]:
        return asyncio.create_task(self._watch_file(hear), name="engine-watch")

    async def _watch_file(self, hear: Callable[..., None], every: float = 0.05) -> None:
        """Wakes the worker when another process commits (a trigger, a cancel, a retry)."""
        seen: int | None = None
        failures = 0
        while True:
            await asyncio.sleep(max(every, backoff(failures - 1)) if failures else every)
            try:
                version = await self.data_version()
            except EngineError as exc:
                # Quiet: the claim loop reports the outage once.
                failures += 1
                wake_log.debug("watching the database failed: %s", exc)
                continue
            failures = 0
            if seen is None:  # a commit made before this first read may have been missed
                seen = version
                hear()
                continue
            if version != seen:
                seen = version
                hear()


def _read(
    db: sqlite3.Connection, tasks_sql: str, logs_sql: str, args: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    """Runs in aiosqlite's thread: both reads in one hand-off."""
    return db.execute(tasks_sql, args).fetchall(), db.execute(logs_sql, args).fetchall()


def _read_chunks(
    db: sqlite3.Connection, status_sql: str, chunks_sql: str, args: dict[str, Any]
) -> tuple[str | None, list[Any]]:
    """Runs in aiosqlite's thread: the run's status, then its chunks (each read is its own
    snapshot, outside any transaction: the second sees whatever committed before it)."""
    found = db.execute(status_sql, args).fetchone()
    return (found[0] if found else None), db.execute(chunks_sql, args).fetchall()


_second: list[Any] = [None, ""]


def _chunk_time(chunk: ChunkWrite) -> str:
    """When a chunk was written, as SQLite stores times (engine.groupcommit._sqlite_time), the
    date and time part formatted once per second: a stream writes thousands a second."""
    whole = int(chunk.written_at)
    if _second[0] != whole:
        _second[0], _second[1] = whole, _sqlite_time(whole)[:19]
    return f"{_second[1]}.{int((chunk.written_at - whole) * 1e6):06d}"


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _write_returning(
    db: sqlite3.Connection, sql: str, args: dict[str, Any]
) -> tuple[Any, ...] | None:
    """Runs in aiosqlite's thread: BEGIN IMMEDIATE, the statement, COMMIT in one hand-off."""
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute(sql, args).fetchone()
        db.execute("COMMIT")
    except BaseException:
        sqlite_rollback(db)
        raise
    return None if row is None else tuple(row)


def _read_value(db: sqlite3.Connection, sql: str, args: dict[str, Any]) -> Any:
    # Outside any transaction (the connection is in autocommit): no write lock is taken.
    return db.execute(sql, args).fetchone()[0]


def _json(value: Any) -> Any:
    # Top-level numbers are stored as BLOBs (engine.codec.sqlite_param); rows written before
    # that may hold a bare number, which the column's numeric affinity made a number.
    return None if value is None else codec.loads(value)
