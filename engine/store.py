"""Every SQL statement the engine issues, behind one class.

Writes made on behalf of an execution are *fenced*: they only take effect while the run's
`lease_epoch` is still the one the execution claimed with, in the same statement, so a worker
that lost its lease cannot record anything. Dialect differences (SQLite vs PostgreSQL) live in
the small `_dialect_*` helpers at the bottom, nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import clock, codec, secrets
from .dberrors import is_transient
from .exceptions import DatabaseError, InvalidRunStateError, RunNotFoundError
from .groupcommit import GroupCommit, Write, direct_write, in_sqlite_thread, invalidate_if_broken
from .records import ClaimedRun, DuePoll, LogWrite, TaskRow, TaskWrite
from .recovery import DEFAULT_MAX_RECOVERIES, recovery_error
from .sql import Statements

log = logging.getLogger("engine.store")

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///engine.db"
WAKE_CHANNEL = "engine_wake"
# How long the writes an execution depends on keep retrying a transient database error
# (unreachable, locked, full) before the execution gives up; see docs/reliability.md.
DEFAULT_PATIENCE = 60.0
# SQLite's busy timeout, unless the URL says `?timeout=SECONDS`.
DEFAULT_BUSY_TIMEOUT = 30.0

log = logging.getLogger("engine.store")
T = TypeVar("T")


class Store:
    """The engine's database: create with a URL, `await connect()`, `await close()`."""

    def __init__(self, database_url: str | None = None, *, pool_size: int = 10) -> None:
        self.url = database_url or DEFAULT_DATABASE_URL
        try:
            parsed = make_url(self.url)
        except ArgumentError as exc:
            raise DatabaseError(
                f"database URL {_hide_password(self.url)!r} is not a URL: use "
                "sqlite+aiosqlite:///engine.db or postgresql+asyncpg://user@host/db"
            ) from exc
        except ValueError as exc:  # SQLAlchemy parses the port with int()
            raise DatabaseError(
                f"database URL {_hide_password(self.url)!r}: the port is not a number: "
                "use postgresql+asyncpg://user@host:5432/db"
            ) from exc
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise DatabaseError(
                f"database URL {parsed.render_as_string(hide_password=True)!r}: only "
                "sqlite+aiosqlite:// and postgresql+asyncpg:// are supported"
            )
        if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
            parsed = parsed.set(drivername="sqlite+aiosqlite")
        elif parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
            parsed = parsed.set(drivername="postgresql+asyncpg")
        self.parsed_url = parsed
        secrets.register(parsed.password)
        self.is_postgres = self.dialect == "postgresql"
        self.engine: AsyncEngine = _dialect_engine(parsed, pool_size)
        # Writes an execution depends on retry transient errors this long (seconds); the
        # scheduler loop's own queries never retry here: they raise at once so the loop can
        # report the outage and back off.
        self.patience = DEFAULT_PATIENCE
        self._sql = Statements(self.is_postgres)
        # SQLite has one writer: group concurrent writes into shared transactions. PostgreSQL
        # writes concurrently, each as one autocommitted statement; batching them in one
        # transaction would hold many runs' row locks at once and invite deadlocks.
        self._group = None if self.is_postgres else GroupCommit(self.engine, self._translate)

    def missing_file(self) -> str | None:
        """The path of a SQLite database file that does not exist yet (connecting creates it)."""
        path = self.parsed_url.database
        if self.is_postgres or not path or path == ":memory:" or os.path.exists(path):
            return None
        return path

    def _translate(self, exc: BaseException) -> BaseException:
        return _database_error(self, exc) if isinstance(exc, Exception) else exc

    async def _patiently(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Runs `attempt`, retrying transient DatabaseErrors with exponential backoff and
        jitter for up to `self.patience` seconds. Safe because every write retried this way is
        an idempotent, fenced upsert."""
        deadline = time.monotonic() + self.patience
        delay = 0.05
        while True:
            try:
                return await attempt()
            except DatabaseError as exc:
                if not exc.transient or time.monotonic() + delay > deadline:
                    raise
                log.debug("%s: transient database error, retrying in %.2fs: %s", what, delay, exc)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 2.0)

    async def close(self) -> None:
        await self.engine.dispose()

    def begin(self) -> Any:
        """A transaction; driver errors come out as DatabaseError."""
        return _Transaction(self)

    # -- jobs ------------------------------------------------------------------------------------

    async def register_jobs(self, entries: Iterable[tuple[str, str, Any]]) -> None:
        rows = [
            {"job_id": j, "version": v, "payload_schema": s, "registered_at": clock.now()}
            for j, v, s in entries
        ]
        if not rows:
            return
        async with self.begin() as conn:
            await conn.execute(self._sql.register_job, rows)

    async def job_versions(
        self, job_id: str | None = None
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The registered versions (of `job_id`, or of every job) and the live workers, read
        together: `[{job_id, version, payload_schema, registered_at}]`, `[{worker_id, jobs, ...}]`.
        """
        async with self.begin() as conn:
            versions = (await conn.execute(self._sql.job_versions, {"job_id": job_id})).all()
            workers = (await conn.execute(self._sql.live_workers, {"now": clock.now()})).all()
        return [dict(r._mapping) for r in versions], [dict(r._mapping) for r in workers]

    # -- workers ---------------------------------------------------------------------------------

    async def upsert_worker(
        self,
        worker_id: str,
        host: str,
        pid: int,
        jobs: Sequence[str],
        lease_seconds: float,
        *,
        sweep: bool = False,
    ) -> None:
        """Records a live worker until now + `lease_seconds` (at start and on every heartbeat).

        `sweep` also deletes the rows of workers that have been gone for a day.
        """
        now = clock.now()
        values = {
            "worker_id": worker_id,
            "host": host,
            "pid": pid,
            "jobs": sorted(jobs),
            "now": now,
            "expires": now + lease_seconds,
        }
        async with self.begin() as conn:
            if sweep:
                await conn.execute(self._sql.sweep_workers, {"before": now - 86400})
            await conn.execute(self._sql.upsert_worker, values)

    async def remove_worker(self, worker_id: str) -> None:
        """A worker that stops cleanly is no longer live."""
        async with self.begin() as conn:
            await conn.execute(self._sql.delete_worker, {"worker_id": worker_id})

    # -- runs ------------------------------------------------------------------------------------

    async def create_run(
        self, job_id: str, version: str, payload: Any, idempotency_key: str | None
    ) -> tuple[str, bool]:
        """Returns (run id, created); an existing idempotency key returns the first run."""
        run_id = uuid.uuid4().hex
        async with self.begin() as conn:
            result = await conn.execute(
                self._sql.create_run,
                {
                    "id": run_id,
                    "job_id": job_id,
                    "job_version": version,
                    "payload": payload,
                    "idempotency_key": idempotency_key,
                    "created_at": clock.now(),
                },
            )
            created = result.rowcount == 1
            if created:
                await self._notify(conn)
            else:
                run_id = (
                    await conn.execute(
                        self._sql.run_by_idempotency, {"job_id": job_id, "key": idempotency_key}
                    )
                ).scalar_one()
        if created:
            self._wake_local()
        return run_id, created

    async def claim_runs(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        job_keys: Sequence[str],
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
    ) -> list[ClaimedRun]:
        """Claims due runs. A run whose execution was lost is recovered, or, past
        `max_recoveries`, failed here (see engine.recovery), in the same transaction."""
        if limit <= 0 or not job_keys:
            return []
        now = clock.now()
        async with self.begin() as conn:
            rows = (
                await conn.execute(
                    self._sql.claim_runs,
                    {
                        "worker": worker_id,
                        "now": now,
                        "expires": now + lease_seconds,
                        "limit": limit,
                        "job_keys": list(job_keys),
                        "max_recoveries": max_recoveries,
                    },
                )
            ).all()
            failed = [r for r in rows if r.status == "FAILED"]
            for r in failed:
                # This round's executions only: earlier ones (before a retry) stay as history.
                lost = list(r.lost_executions or [])[-(r.recoveries + 1) :]
                error = recovery_error(r.id, lost)
                log.warning("run %s failed: %s", r.id, error["message"])
                await conn.execute(
                    self._sql.fail_exhausted, {"id": r.id, "epoch": r.lease_epoch, "error": error}
                )
                await conn.execute(self._sql.cancel_open_tasks, {"run_id": r.id, "now": now})
        if failed:
            # The failed runs took claim slots: look again at once.
            self._wake_local()
        return [
            ClaimedRun(r.id, r.job_id, r.job_version, r.payload, r.lease_epoch, r.attempt)
            for r in rows
            if r.status != "FAILED"
        ]

    async def load_replay(self, run_id: str) -> tuple[list[TaskRow], set[tuple[str, str]]]:
        """All recorded tasks of a run in one query, and the log lines already written."""
        return await self._patiently("loading a run", lambda: self._load_replay(run_id))

    async def _load_replay(self, run_id: str) -> tuple[list[TaskRow], set[tuple[str, str]]]:
        tasks_sql, logs_sql = self._sql.raw_load_tasks.text, self._sql.raw_load_log_keys.text
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    if self.is_postgres:
                        tasks = await driver.fetch(tasks_sql, run_id)
                        logs = await driver.fetch(logs_sql, run_id)
                    else:
                        tasks, logs = await in_sqlite_thread(
                            driver, _sqlite_read, tasks_sql, logs_sql, {"run_id": run_id}
                        )
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc
        return [_task_row(tuple(r), self.is_postgres) for r in tasks], {(r[0], r[1]) for r in logs}

    async def write_task(
        self, run_id: str, epoch: int, task: TaskWrite, logs: Sequence[LogWrite] = ()
    ) -> bool:
        """Records a task (fenced). False when the execution no longer holds the lease.

        Concurrent writes share a transaction (see engine.groupcommit); each returns only once
        its own row is committed.
        """
        log_sql = self._sql.raw_write_log
        write = Write(
            (self._sql.raw_write_task, {"run_id": run_id, "epoch": epoch, **task.__dict__}),
            [(log_sql, {"run_id": run_id, **log.__dict__}) for log in logs],
        )
        try:
            return await self._hot(write)
        except DatabaseError as exc:
            if not exc.transient:
                raise
        return await self._patiently("recording a task", lambda: self._hot(write))

    async def _hot(self, write: Write) -> bool:
        if self._group is None:
            return await direct_write(self.engine, write, self._translate)
        return await self._group.submit(write)

    async def suspend_run(
        self, run_id: str, epoch: int, wake_at: float | None, logs: Sequence[LogWrite] = ()
    ) -> bool:
        return await self._patiently(
            "suspending a run", lambda: self._suspend_run(run_id, epoch, wake_at, logs)
        )

    async def _suspend_run(
        self, run_id: str, epoch: int, wake_at: float | None, logs: Sequence[LogWrite]
    ) -> bool:
        statement = self._sql.suspend_at if wake_at is not None else self._sql.suspend
        async with self.begin() as conn:
            result = await conn.execute(
                statement, {"id": run_id, "epoch": epoch, "wake_at": wake_at}
            )
            if result.rowcount != 1:
                await conn.rollback()
                return False
            if logs:
                await self._write_logs(conn, run_id, logs)
        return True

    async def finish_run(
        self,
        run_id: str,
        epoch: int,
        status: str,
        *,
        output: Any = None,
        output_type: str | None = None,
        error: dict[str, Any] | None = None,
        logs: Sequence[LogWrite] = (),
    ) -> bool:
        values = {"status": status, "output": output, "output_type": output_type, "error": error}
        return await self._patiently(
            "finishing a run", lambda: self._finish_run(run_id, epoch, values, logs)
        )

    async def _finish_run(
        self, run_id: str, epoch: int, values: dict[str, Any], logs: Sequence[LogWrite]
    ) -> bool:
        now = clock.now()
        async with self.begin() as conn:
            result = await conn.execute(
                self._sql.finish_run,
                {"id": run_id, "epoch": epoch, "now": now, **values},
            )
            if result.rowcount != 1:
                await conn.rollback()
                return False
            await conn.execute(self._sql.cancel_open_tasks, {"run_id": run_id, "now": now})
            if logs:
                await self._write_logs(conn, run_id, logs)
        return True

    async def heartbeat(
        self, worker_id: str, lease_seconds: float, run_ids: Sequence[str]
    ) -> dict[str, int]:
        """Extends the leases of the runs this worker is executing; returns those it still holds,
        with their epochs."""
        if not run_ids:
            return {}
        now = clock.now()
        async with self.begin() as conn:
            rows = (
                await conn.execute(
                    self._sql.heartbeat,
                    {"worker": worker_id, "expires": now + lease_seconds, "ids": list(run_ids)},
                )
            ).all()
        return {r.id: r.lease_epoch for r in rows}

    async def data_version(self) -> int:
        """SQLite: a number that changes when another process commits (no NOTIFY there)."""
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    return await in_sqlite_thread(driver, _data_version)
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc

    async def next_due(self, job_keys: Sequence[str], pollers: Sequence[str]) -> float | None:
        """The earliest time at which this scheduler has something to do, if any."""
        async with self.begin() as conn:
            row = (
                await conn.execute(
                    self._sql.next_due,
                    {
                        "job_keys": list(job_keys) or [""],
                        "pollers": list(pollers) or [""],
                    },
                )
            ).first()
        times = [t for t in row or () if t is not None]
        return min(times).timestamp() if times else None

    # -- polls -----------------------------------------------------------------------------------

    async def claim_polls(self, pollers: Sequence[str], limit: int, hold: float) -> list[DuePoll]:
        """Due polls, each pushed `hold` seconds into the future so no one else takes it."""
        if not pollers:
            return []
        now = clock.now()
        async with self.begin() as conn:
            rows = (
                await conn.execute(
                    self._sql.claim_polls,
                    {
                        "now": now,
                        "hold": now + hold,
                        "limit": limit,
                        "pollers": list(pollers),
                    },
                )
            ).all()
        return [
            DuePoll(
                r.id,
                r.run_id,
                r.poller,
                r.params,
                r.poll_state or {},
                r.started_at.timestamp() if r.started_at else now,
            )
            for r in rows
        ]

    async def reschedule_poll(
        self, task_id: int, next_poll_at: float, poll_state: dict[str, Any]
    ) -> None:
        write = Write(
            (
                self._sql.raw_reschedule_poll,
                {"id": task_id, "next_poll_at": next_poll_at, "poll_state": poll_state},
            )
        )
        await self._patiently("rescheduling a poll", lambda: self._hot(write))

    async def finish_poll(
        self,
        poll: DuePoll,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        poll_state: dict[str, Any] | None = None,
    ) -> None:
        """Completes (or errors) a poll task and wakes its run."""
        await self._patiently(
            "finishing a poll", lambda: self._finish_poll(poll, output, error, poll_state)
        )

    async def _finish_poll(
        self,
        poll: DuePoll,
        output: Any,
        error: dict[str, Any] | None,
        poll_state: dict[str, Any] | None,
    ) -> None:
        now = clock.now()
        async with self.begin() as conn:
            result = await conn.execute(
                self._sql.finish_poll,
                {
                    "id": poll.task_id,
                    "status": "ERRORED" if error else "COMPLETED",
                    "output": output,
                    "error": error,
                    "now": now,
                    "poll_state": poll_state if poll_state is not None else poll.poll_state,
                },
            )
            woke = result.rowcount == 1
            if woke:
                await conn.execute(self._sql.wake_run, {"id": poll.run_id, "now": now})
                await self._notify(conn)
        if woke:
            self._wake_local()

    # -- inspection and control ------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any]:
        async with self.begin() as conn:
            row = (await conn.execute(self._sql.get_run, {"id": run_id})).first()
        if row is None:
            raise RunNotFoundError(
                f"no run has id {run_id!r}: `engine runs list` shows the runs there are"
            )
        return dict(row._mapping)

    async def list_runs(
        self, job_id: str | None, status: str | None, limit: int
    ) -> list[dict[str, Any]]:
        async with self.begin() as conn:
            rows = (
                await conn.execute(
                    self._sql.list_runs, {"job_id": job_id, "status": status, "limit": limit}
                )
            ).all()
        return [dict(r._mapping) for r in rows]

    async def get_tasks(self, run_id: str) -> list[dict[str, Any]]:
        async with self.begin() as conn:
            rows = (await conn.execute(self._sql.get_tasks, {"run_id": run_id})).all()
        return [dict(r._mapping) for r in rows]

    async def get_logs(self, run_id: str) -> list[dict[str, Any]]:
        async with self.begin() as conn:
            rows = (await conn.execute(self._sql.get_logs, {"run_id": run_id})).all()
        return [dict(r._mapping) for r in rows]

    async def cancel_run(self, run_id: str) -> str:
        """Cancels a QUEUED, WAITING or RUNNING run; returns its status before.

        A run that finished first (even a moment before) is left alone: InvalidRunStateError.
        """
        async with self.begin() as conn:
            before = await self._locked_status(conn, run_id)
            now = clock.now()  # once the row is ours: nothing was recorded after this
            changed = False
            if before in ("QUEUED", "WAITING", "RUNNING"):
                result = await conn.execute(self._sql.cancel_run, {"id": run_id, "now": now})
                changed = result.rowcount == 1
            if not changed:
                # Leaving the block by raising rolls the transaction back.
                status = (
                    before
                    if before not in ("QUEUED", "WAITING", "RUNNING")
                    else (await self._locked_status(conn, run_id))
                )
                raise InvalidRunStateError(
                    f"run {run_id} is already {status}: only QUEUED, WAITING and RUNNING "
                    "runs can be canceled"
                )
            await conn.execute(self._sql.cancel_open_tasks, {"run_id": run_id, "now": now})
            # The worker executing it hears of it at once and interrupts the step in flight.
            await self._notify(conn)
        self._wake_local()
        return before

    async def _locked_status(self, conn: AsyncConnection, run_id: str) -> str:
        """The run's status, its row locked until the transaction ends (PostgreSQL)."""
        status = (await conn.execute(self._sql.run_status_locked, {"id": run_id})).scalar()
        if status is None:
            raise RunNotFoundError(f"no run has id {run_id!r}")
        return str(status)

    async def canceled_among(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs have been canceled."""
        if not run_ids:
            return set()
        async with self.begin() as conn:
            rows = (await conn.execute(self._sql.canceled_among, {"ids": list(run_ids)})).all()
        return {r.id for r in rows}

    async def retry_run(self, run_id: str) -> None:
        """Queues a FAILED run again; its failed tasks will run again, completed ones replay."""
        now = clock.now()
        async with self.begin() as conn:
            status = await self._locked_status(conn, run_id)
            changed = False
            if status == "FAILED":
                result = await conn.execute(self._sql.retry_run, {"id": run_id})
                changed = result.rowcount == 1
            if not changed:
                raise InvalidRunStateError(
                    f"run {run_id} is {status}: only a FAILED run can be retried"
                )
            await conn.execute(self._sql.reopen_failed_tasks, {"run_id": run_id, "now": now})
            await self._notify(conn)
        self._wake_local()

    # -- internals -------------------------------------------------------------------------------

    async def _write_logs(
        self, conn: AsyncConnection, run_id: str, logs: Sequence[LogWrite]
    ) -> None:
        await conn.execute(
            self._sql.write_log, [{"run_id": run_id, **log.__dict__} for log in logs]
        )

    async def _notify(self, conn: AsyncConnection) -> None:
        if self.is_postgres:
            await conn.execute(text(f"NOTIFY {WAKE_CHANNEL}"))

    # Schedulers in this process that share the database hear of new work without a query;
    # called after the commit, so what they claim is visible to them.
    def add_local_listener(self, callback: Callable[[], None]) -> None:
        _local_listeners.setdefault(self.url, set()).add(callback)

    def remove_local_listener(self, callback: Callable[[], None]) -> None:
        _local_listeners.get(self.url, set()).discard(callback)

    def _wake_local(self) -> None:
        for callback in list(_local_listeners.get(self.url, ())):
            callback()


_local_listeners: dict[str, set[Callable[[], None]]] = {}


def _sqlite_read(
    db: sqlite3.Connection, tasks_sql: str, logs_sql: str, args: dict[str, Any]
) -> tuple[list[Any], list[Any]]:
    """Runs in aiosqlite's thread: both reads in one hand-off."""
    return db.execute(tasks_sql, args).fetchall(), db.execute(logs_sql, args).fetchall()


def _data_version(db: sqlite3.Connection) -> int:
    # A PRAGMA outside any transaction: it must not take the write lock.
    return int(db.execute("PRAGMA data_version").fetchone()[0])


def _sqlite_json(value: Any) -> Any:
    # Top-level numbers are stored as BLOBs (engine.codec.sqlite_param); rows written before
    # that may hold a bare number, which the column's numeric affinity made a number.
    return None if value is None else codec.loads(value)


def _task_row(r: tuple[Any, ...], postgres: bool) -> TaskRow:
    parent, key, kind, name, status, attempts, output, output_type, error, due_at, seq = r
    if not postgres:  # JSON text and UTC timestamps as SQLite stores them
        output, error = _sqlite_json(output), _sqlite_json(error)
        due_at = None if due_at is None else datetime.fromisoformat(due_at).replace(tzinfo=UTC)
    return TaskRow(parent, key, kind, name, status, attempts, output, output_type, error,
                   due_at, seq)  # fmt: skip


class _Transaction:
    """`async with store.begin() as conn`, translating driver failures into DatabaseError."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ctx: Any = None

    async def __aenter__(self) -> AsyncConnection:
        try:
            self.ctx = self.store.engine.begin()
            return await self.ctx.__aenter__()  # type: ignore[no-any-return]
        except (OSError, SQLAlchemyError) as exc:
            raise _database_error(self.store, exc) from exc

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.ctx.__aexit__(*exc_info)
        except (OSError, SQLAlchemyError) as exc:
            raise _database_error(self.store, exc) from exc
        if exc_info[1] is not None and isinstance(exc_info[1], (OSError, SQLAlchemyError)):
            raise _database_error(self.store, exc_info[1]) from exc_info[1]


def _hide_password(url: str) -> str:
    """`url` with what looks like its password replaced by ***, for a URL too broken to parse."""
    hidden = re.sub(r"^([^:/@]*://[^:/@]*):.*@", r"\1:***@", url)
    return re.sub(r":[^:@]*@", ":***@", hidden)  # no "://": any "user:password@"


def _database_error(store: Store, exc: BaseException) -> DatabaseError:
    if isinstance(exc, DatabaseError):
        return exc
    safe_url = store.parsed_url.render_as_string(hide_password=True)
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0:1]
    reason = detail[0] if detail else type(exc).__name__
    transient = is_transient(exc, postgres=store.is_postgres)
    if isinstance(exc, (OSError, OperationalError, DBAPIError)) and (
        "no such table" in reason or ("does not exist" in reason and "relation" in reason)
    ):
        return DatabaseError(
            f"database {safe_url} has no engine tables: run `engine db upgrade` "
            f"(or start `engine run`, which upgrades it) ({reason})"
        )
    return DatabaseError(f"database {safe_url}: {reason}", transient=transient)


# -- dialects ----------------------------------------------------------------------------------


def _dialect_engine(url: Any, pool_size: int) -> AsyncEngine:
    if url.get_backend_name() == "postgresql":
        # No overflow: a worker's connections are bounded by its pool size (see docs/postgres.md),
        # and executions queue for a connection rather than exceed max_connections.
        return create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=120,
            json_serializer=codec.dumps,
            json_deserializer=codec.loads,
        )
    try:
        busy_timeout = float(url.query.get("timeout", DEFAULT_BUSY_TIMEOUT))
        if not 0 <= busy_timeout <= 3600:
            raise ValueError(busy_timeout)
    except (TypeError, ValueError):
        raise DatabaseError(
            f"database URL ?timeout={url.query.get('timeout')!r}: give SQLite's busy timeout "
            "in seconds, 0 to 3600, e.g. ?timeout=30"
        ) from None
    # One connection: SQLite has one writer anyway, and queueing in the pool is far cheaper
    # than SQLite's sleep-and-retry busy handler.
    engine = create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=120,
        # Every use of a connection ends in COMMIT or ROLLBACK (store.begin, the hot path), so
        # the pool's own rollback on return would only cost a thread hand-off per transaction.
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
        # Take the write lock up front: a deferred transaction that upgrades later can fail
        # with "database is locked" instead of waiting its turn.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
