"""The store on PostgreSQL: a pool, concurrent writes, LISTEN/NOTIFY for news.

Each hot-path write is one autocommitted statement (one round trip) on its own connection:
batching many runs' writes in one transaction would hold their row locks at once and invite
deadlocks. Other processes hear of new work at once through NOTIFY on one channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import text
from sqlalchemy.engine import URL

from . import codec
from .dberrors import PostgresErrors, invalidate_if_broken
from .exceptions import DatabaseError
from .outage import backoff
from .records import ChunkWrite, TaskRow
from .sa_async import create_async_engine
from .sql import DriverSQL
from .sql_streams import CHANNEL_PREFIX
from .store import Store
from .writes import Write, prepare

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

# The wake-up side task reports as part of the worker loop.
wake_log = logging.getLogger("engine.scheduler")

WAKE_CHANNEL = "engine_wake"
# Any fixed number: serializes concurrent `engine run` start-ups on one PostgreSQL database.
_MIGRATE_LOCK_ID = 0x656E67696E65


class PostgresStore(Store):
    is_postgres = True
    errors = PostgresErrors
    idle_poll = 5.0
    # asyncpg in autocommit sends no BEGIN/COMMIT: a read is one round trip.
    read_options: ClassVar[dict[str, Any]] = {"isolation_level": "AUTOCOMMIT"}
    # Followers are woken by NOTIFY (engine.sql_streams); this is their safety net.
    stream_poll = 1.0

    def _make_engine(self, url: URL, pool_size: int) -> AsyncEngine:
        # No overflow: a worker's connections are bounded by its pool size (see
        # docs/postgres.md), and executions queue for a connection rather than exceed
        # max_connections.
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=120,
            json_serializer=codec.dumps,
            json_deserializer=codec.loads,
        )

    async def _hot(self, write: Write) -> bool:
        """One write on its own connection; one round trip when it is one statement."""
        try:
            (sql, args), then = prepare(write, _time, codec.dumps)
            async with self.engine.connect() as conn:
                try:
                    return await _write(conn, sql, args, then)
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc

    async def _write_chunks(self, run_id: str, epoch: int, chunks: Sequence[ChunkWrite]) -> bool:
        # The whole batch as arrays: one statement, one round trip (engine.sql_streams).
        args = (
            run_id,
            epoch,
            [c.stream for c in chunks],
            [c.seq for c in chunks],
            [c.task for c in chunks],
            [c.attempt for c in chunks],
            [c.n for c in chunks],
            [c.data for c in chunks],
            [_time(c.written_at) for c in chunks],
        )
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    return bool(await driver.fetchval(self._stream_sql.pg_write_batch, *args))
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc

    async def read_chunks(
        self, run_id: str, stream: str, after: int, limit: int
    ) -> tuple[str | None, list[tuple[Any, ...]]]:
        sql = self._stream_sql
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    # Outside a transaction: each read sees what committed before it.
                    status = await driver.fetchval(sql.raw_status, run_id)
                    rows = await driver.fetch(sql.raw_read, run_id, stream, after, limit)
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc
        # The pool's connections decode JSON themselves (SQLAlchemy registers codec.loads).
        return status, [tuple(r) for r in rows]

    @contextlib.asynccontextmanager
    async def stream_wakeups(self, run_id: str, woken: asyncio.Event) -> AsyncIterator[None]:
        """LISTENs on the run's channel on a connection of its own, outside the pool; without
        one (the server refuses more connections) the follower polls every `stream_poll`."""
        import asyncpg

        channel = CHANNEL_PREFIX + run_id
        dsn = self.parsed_url.set(drivername="postgresql").render_as_string(hide_password=False)
        conn = None
        try:
            conn = await asyncpg.connect(dsn, timeout=30)
            await conn.add_listener(channel, lambda *_: woken.set())
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            wake_log.debug("LISTEN for run %s failed (%s): polling instead", run_id, exc)
        try:
            yield
        finally:
            if conn is not None:
                conn.terminate()

    async def announce_stream_end(self, run_id: str) -> None:
        try:
            async with self.begin() as conn:
                await conn.execute(
                    text("SELECT pg_notify(:channel, '')"), {"channel": CHANNEL_PREFIX + run_id}
                )
        except DatabaseError as exc:  # followers notice at their next poll instead
            wake_log.debug("announcing the end of run %s's streams failed: %s", run_id, exc)

    async def write_returning(
        self, sql: DriverSQL, values: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    row = await driver.fetchrow(sql.text, *(values[n] for n in sql.names))
                    return None if row is None else tuple(row)
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc

    async def _read_replay_rows(self, driver: Any, run_id: str) -> tuple[list[Any], list[Any]]:
        tasks = await driver.fetch(self._sql.raw_load_tasks.text, run_id)
        logs = await driver.fetch(self._sql.raw_load_log_keys.text, run_id)
        return tasks, logs

    def _task_row(self, row: tuple[Any, ...]) -> TaskRow:
        # asyncpg decodes JSON and timestamps itself: the row is the TaskRow's fields in order.
        return TaskRow(*row)

    async def _notify(self, conn: AsyncConnection) -> None:
        await conn.execute(text(f"NOTIFY {WAKE_CHANNEL}"))

    async def lock_for_migration(self, conn: AsyncConnection) -> None:
        await conn.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATE_LOCK_ID})"))

    def watch(self, hear: Callable[..., None]) -> asyncio.Task[None]:
        return asyncio.create_task(self._listen(hear), name="engine-listen")

    async def _listen(self, hear: Callable[..., None]) -> None:
        """LISTENs on its own connection, outside the pool; reconnects with backoff."""
        import asyncpg

        dsn = self.parsed_url.set(drivername="postgresql").render_as_string(hide_password=False)
        failures = 0
        while True:
            try:
                conn = await asyncpg.connect(dsn, timeout=30)
                try:
                    closed = asyncio.Event()
                    conn.add_termination_listener(functools.partial(_set, closed))
                    await conn.add_listener(WAKE_CHANNEL, hear)
                    # A NOTIFY may have been sent while we were not listening.
                    hear()
                    failures = 0
                    await closed.wait()
                finally:
                    conn.terminate()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Quiet: the claim loop reports the outage once; wake it so it notices.
                wake_log.debug("LISTEN connection lost (%s); retrying", exc)
            # Lost or failed: whatever was announced meanwhile is found by the next claim.
            hear()
            await asyncio.sleep(backoff(failures))
            failures += 1


def _time(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


async def _write(
    conn: AsyncConnection, sql: str, args: list[Any], then: list[tuple[str, list[Any]]]
) -> bool:
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


def _set(event: asyncio.Event, *_: Any) -> None:
    event.set()
