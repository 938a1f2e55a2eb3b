"""Every SQL statement the engine issues, behind one class per dialect.

Writes made on behalf of an execution are *fenced*: they only take effect while the run's
`lease_epoch` is still the one the execution claimed with, in the same statement, so a worker
that lost its lease cannot record anything.

`Store(url)` returns the store of the URL's dialect: `SQLiteStore` (engine.store_sqlite) or
`PostgresStore` (engine.store_postgres). This class holds everything they share; each dialect
implements the few operations that differ, declared in engine.database: its engine setup, its
hot write path, its raw replay reads, its wake-up side task, NOTIFY, its error classes and its
migration lock. SQL text lives in engine.sql.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy.engine import URL
from sqlalchemy.sql.expression import Executable

from . import children, clock
from .database import DEFAULT_DATABASE_URL as DEFAULT_DATABASE_URL  # engine.store API
from .database import Database, parse_url
from .dberrors import invalidate_if_broken
from .events import SentEvent, SentSignal, Wait, canonical, digest, project, send_token
from .exceptions import DatabaseError, InvalidRunStateError, RunNotFoundError
from .flow import PRIORITY_STEP
from .records import (
    ChildStart,
    ChunkWrite,
    ClaimedRun,
    DuePoll,
    LogWrite,
    Registration,
    TaskRow,
    TaskWrite,
)
from .recovery import DEFAULT_MAX_RECOVERIES, recovery_error
from .sql import Statements
from .sql_children import ChildStatements
from .sql_events import EventStatements
from .sql_streams import StreamStatements
from .sql_usage import USAGE_FIELDS, UsageStatements
from .writes import Write

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

log = logging.getLogger("engine.store")

# Rounds of a limited claim (see Store._claim_limited).
_LIMITED_ROUNDS = 4

# How long the writes an execution depends on keep retrying a transient database error
# (unreachable, locked, full) before the execution gives up; see docs/reliability.md.
DEFAULT_PATIENCE = 60.0

T = TypeVar("T")

# A run `@job(on_event=...)` starts: (job id, version, priority, (concurrency key, limit) | None).
# (job id, version, priority, concurrency (key, limit), run timeout in seconds)
StartOnEvent = tuple[str, str, int, tuple[str, int] | None, float | None]
# Which runs an event starts, from the jobs registered with its name and the live workers.
PlanRuns = Callable[[list[dict[str, Any]], list[dict[str, Any]]], list[StartOnEvent]]


class Store(Database):
    """The engine's database: create with a URL, `await connect()`, `await close()`.

    `Store(url)` makes a `SQLiteStore` or a `PostgresStore`, according to the URL.
    """

    def __new__(cls, database_url: str | None = None, *, pool_size: int = 10) -> Store:
        if cls is Store:
            cls = _dialect_class(parse_url(database_url or DEFAULT_DATABASE_URL))
        return super().__new__(cls)

    def __init__(self, database_url: str | None = None, *, pool_size: int = 10) -> None:
        super().__init__(database_url, pool_size=pool_size)
        # Writes an execution depends on retry transient errors this long (seconds); the
        # scheduler loop's own queries never retry here: they raise at once so the loop can
        # report the outage and back off.
        self.patience = DEFAULT_PATIENCE
        self._sql = Statements(self.is_postgres)
        self._usage_sql = UsageStatements(self.is_postgres)
        self._events_sql = EventStatements(self.is_postgres)
        self._stream_sql = StreamStatements(self.is_postgres)
        self._children_sql = ChildStatements(self.is_postgres)
        self._claim_found_none = True

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

    # -- jobs ------------------------------------------------------------------------------------

    async def register_jobs(self, entries: Iterable[Registration]) -> None:
        """Records job versions in `engine_jobs` (a version registered again is updated)."""
        now = clock.now()
        rows = [{**dataclasses.asdict(entry), "registered_at": now} for entry in entries]
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
        async with self.read() as conn:
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
        self,
        job_id: str,
        version: str,
        payload: Any,
        idempotency_key: str | None,
        *,
        priority: int = 0,
        concurrency: tuple[str, int] | None = None,
        not_before: float | None = None,
        timeout: float | None = None,
    ) -> tuple[str, bool]:
        """Returns (run id, created); an existing idempotency key returns the first run.

        `concurrency` is (key, limit) for a run of a job with a concurrency limit;
        `not_before` delays its first claim; unfinished `timeout` seconds after it was due
        to start (now, or `not_before`), it is canceled.
        """
        async with self.begin() as conn:
            run_id, created = await self._create_run(
                conn,
                job_id,
                version,
                payload,
                idempotency_key,
                priority,
                concurrency,
                not_before=not_before,
                timeout=timeout,
            )
            if created:
                await self._notify(conn)
        if created:
            self._wake_local()
        return run_id, created

    async def _create_run(
        self,
        conn: AsyncConnection,
        job_id: str,
        version: str,
        payload: Any,
        idempotency_key: str | None,
        priority: int,
        concurrency: tuple[str, int] | None,
        *,
        not_before: float | None = None,
        timeout: float | None = None,
    ) -> tuple[str, bool]:
        run_id = uuid.uuid4().hex
        now = clock.now()
        key, limit = concurrency if concurrency is not None else (None, None)
        delayed = not_before is not None and not_before > now
        # A delayed run ranks from its due time: it is claimed after the runs due before it.
        due = not_before if delayed and not_before is not None else now
        result = await conn.execute(
            self._sql.create_run,
            {
                "id": run_id,
                "job_id": job_id,
                "job_version": version,
                "payload": payload,
                "idempotency_key": idempotency_key,
                "created_at": now,
                "priority": priority,
                "rank_at": due - priority * PRIORITY_STEP,
                "concurrency_key": key,
                "concurrency_limit": limit,
                "wake_at": not_before if delayed else None,
                "deadline_at": None if timeout is None else due + timeout,
            },
        )
        if result.rowcount == 1:
            return run_id, True
        run_id = (
            await conn.execute(
                self._sql.run_by_idempotency, {"job_id": job_id, "key": idempotency_key}
            )
        ).scalar_one()
        return run_id, False

    async def claim_runs(
        self,
        worker_id: str,
        limit: int,
        lease_seconds: float,
        job_keys: Sequence[str],
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
        *,
        limited: Sequence[str] = (),
    ) -> list[ClaimedRun]:
        """Claims due runs, highest rank first (priority, then trigger time). A run whose
        execution was lost is recovered, or, past `max_recoveries`, failed here (see
        engine.recovery), right after the claim commits (`_fail_exhausted`).

        `limited` names the job ids among `job_keys` that have a concurrency limit: their runs
        are claimed only while their job (and key) has a free slot (`_claim_limited`).
        """
        if limit <= 0 or not job_keys:
            return []
        now = clock.now()
        # Read first only after a claim that found nothing: a busy worker's next claim most
        # likely finds runs, and the read would only cost it a round trip.
        if self._claim_found_none and not await self._any_ready(now, job_keys):
            return []
        values = {
            "worker": worker_id,
            "now": now,
            "expires": now + lease_seconds,
            "limit": limit,
            "job_keys": list(job_keys),
            "max_recoveries": max_recoveries,
        }
        async with self.begin() as conn:
            if limited:
                rows = await self._claim_limited(conn, values, sorted(set(limited)))
            else:
                rows = (await conn.execute(self._sql.claim_runs, values)).all()
            self._claim_found_none = not rows
        failed = [r for r in rows if r.lease_owner is None]  # claimed to be failed
        for r in failed:
            await self._fail_exhausted(r)
        if failed:
            # The failed runs took claim slots: look again at once.
            self._wake_local()
        return [
            ClaimedRun(
                r.id,
                r.job_id,
                r.job_version,
                r.payload,
                r.lease_epoch,
                r.attempt,
                r.parent_run_id,
                r.idempotency_key,
            )
            for r in rows
            if r.lease_owner is not None
        ]

    async def _fail_exhausted(self, r: Any) -> None:
        """Ends FAILED a run the claim found out of recoveries. Not in the claim's transaction:
        the claim locked the run's row, and its parent's comes first (docs/reliability.md, lock
        order). The claim gave the run a fresh epoch and lease without an owner; this end is
        fenced on that epoch (a cancel meanwhile wins), and if it never commits, the lease
        lapses and the next claim fails the run again."""
        # This round's executions only: earlier ones (before a retry) stay as history.
        lost = list(r.lost_executions or [])[-(r.recoveries + 1) :]
        error = recovery_error(r.id, lost)
        log.warning("run %s failed: %s", r.id, error["message"])
        values = {"status": "FAILED", "output": None, "output_type": None, "error": error}
        await self._patiently(
            "failing a run out of recoveries",
            lambda: self._finish_run(
                r.id, r.lease_epoch, values, (), r.parent_run_id, True, lost_attempts=True
            ),
        )

    async def _any_ready(self, now: float, job_keys: Sequence[str]) -> bool:
        """Whether the claim may find a run (engine.store_sqlite reads first; here the claim's
        own UPDATE locks no row when none is ready, so it is not worth a round trip)."""
        return True

    async def _claim_limited(
        self, conn: AsyncConnection, values: dict[str, Any], job_ids: list[str]
    ) -> list[Any]:
        """The claim when some jobs have a concurrency limit.

        Claims of a limited job take turns (PostgreSQL: an advisory lock per job id, taken in
        one order; SQLite: BEGIN IMMEDIATE already serializes writers), so the RUNNING runs
        each counts include every claim committed before it. The candidates come in rank order
        with their key's live RUNNING count; runs past their key's free slots are left QUEUED.
        A few rounds let runs of other keys fill the slots a crowded key could not use.
        """
        if self._sql.lock_job_claims is not None:
            for job_id in job_ids:
                await conn.execute(self._sql.lock_job_claims, {"job_id": job_id})
        claimed: list[Any] = []
        wanted = int(values["limit"])
        for _ in range(_LIMITED_ROUNDS):
            scan = wanted * 4 + 16
            candidates = (
                await conn.execute(self._sql.claim_candidates, {**values, "scan": scan})
            ).all()
            taken: dict[tuple[str, str], int] = {}
            ids: list[str] = []
            skipped = False
            for c in candidates:
                if len(ids) == wanted:
                    break
                if c.concurrency_key is not None:
                    group = (c.job_id, c.concurrency_key)
                    running = taken.get(group, int(c.running))
                    if running >= int(c.concurrency_limit):
                        skipped = True
                        continue
                    taken[group] = running + 1
                ids.append(c.id)
            if ids:
                claimed += (await conn.execute(self._sql.claim_ids, {**values, "ids": ids})).all()
                wanted -= len(ids)
            # Another round only when runs were passed over for a full key while slots remain
            # and the scan may have stopped short of other keys' runs.
            if not (skipped and wanted > 0 and len(candidates) == scan):
                break
        return claimed

    async def load_replay(self, run_id: str) -> tuple[list[TaskRow], set[tuple[str, str]]]:
        """All recorded tasks of a run in one query, and the log lines already written."""
        return await self._patiently("loading a run", lambda: self._load_replay(run_id))

    async def _load_replay(self, run_id: str) -> tuple[list[TaskRow], set[tuple[str, str]]]:
        try:
            async with self.engine.connect() as conn:
                try:
                    driver: Any = (await conn.get_raw_connection()).driver_connection
                    tasks, logs = await self._read_replay_rows(driver, run_id)
                except Exception as exc:
                    await invalidate_if_broken(conn, exc)
                    raise
        except Exception as exc:
            raise self._translate(exc) from exc
        return [self._task_row(tuple(r)) for r in tasks], {(r[0], r[1]) for r in logs}

    async def write_task(
        self,
        run_id: str,
        epoch: int,
        task: TaskWrite,
        logs: Sequence[LogWrite] = (),
        worker: str | None = None,
    ) -> bool:
        """Records a task (fenced), run by `worker`. False when the execution no longer holds
        the lease.

        Concurrent writes share a transaction (see engine.groupcommit); each returns only once
        its own row is committed.
        """
        log_sql = self._sql.raw_write_log
        then = [(log_sql, {"run_id": run_id, **log.__dict__}) for log in logs]
        if task.usage is not None:
            then.append((self._usage_sql.raw_write, _usage_values(run_id, task)))
        if task.retried:
            ident = {"run_id": run_id, "parent_path": task.parent_path, "key": task.key}
            then.append((self._sql.raw_keep_failed_attempt, {**ident, "ended_at": clock.now()}))
        write = Write(
            (
                self._sql.raw_write_task,
                {"run_id": run_id, "epoch": epoch, "worker": worker, **task.__dict__},
            ),
            then,
        )
        try:
            return await self._hot(write)
        except DatabaseError as exc:
            if not exc.transient:
                raise
        return await self._patiently("recording a task", lambda: self._hot(write))

    async def keep_lost_attempt(self, run_id: str, epoch: int, parent_path: str, key: str) -> None:
        """Keeps in the attempt history the attempt a lost execution left RUNNING (fenced),
        before the step runs again."""
        values = {"run_id": run_id, "epoch": epoch, "parent_path": parent_path, "key": key}

        async def keep() -> None:
            async with self.begin() as conn:
                await conn.execute(self._sql.keep_lost_attempt, values)

        await self._patiently("keeping a lost attempt", keep)

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
            row = (
                await conn.execute(statement, {"id": run_id, "epoch": epoch, "wake_at": wake_at})
            ).first()
            if row is None:
                await conn.rollback()
                return False
            if logs:
                await self._write_logs(conn, run_id, logs)
            await self._slot_freed(conn, row.concurrency_key)
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
        parent_run_id: str | None = None,
        cascade: bool = False,
    ) -> bool:
        """Records a run's end (fenced). A child run (`parent_run_id`) settles its parent's
        task in the same transaction; `cascade` (the run started children) cancels the
        children that have not ended, and theirs."""
        values = {"status": status, "output": output, "output_type": output_type, "error": error}
        return await self._patiently(
            "finishing a run",
            lambda: self._finish_run(run_id, epoch, values, logs, parent_run_id, cascade),
        )

    async def _finish_run(
        self,
        run_id: str,
        epoch: int,
        values: dict[str, Any],
        logs: Sequence[LogWrite],
        parent_run_id: str | None,
        cascade: bool,
        *,
        lost_attempts: bool = False,
    ) -> bool:
        now = clock.now()
        woke = False
        async with self.begin() as conn:
            if parent_run_id is not None:
                await self._lock_run(conn, parent_run_id)
            row = (
                await conn.execute(
                    self._sql.finish_run,
                    {"id": run_id, "epoch": epoch, "now": now, **values},
                )
            ).first()
            if row is None:
                await conn.rollback()
                return False
            if lost_attempts:  # the run's RUNNING attempts were lost with its executions
                await conn.execute(self._sql.keep_lost_attempts_of_run, {"run_id": run_id})
            await conn.execute(self._sql.cancel_open_tasks, {"run_id": run_id, "now": now})
            woke = await self._run_ended(conn, run_id, row, cascade=cascade, **values)
            if logs:
                await self._write_logs(conn, run_id, logs)
            await self._slot_freed(conn, row.concurrency_key)
        if woke:
            self._wake_local()
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

    async def next_due(
        self, job_keys: Sequence[str], pollers: Sequence[str], after: float = 0.0
    ) -> float | None:
        """The earliest time at which this scheduler has something to do, if any; wake-ups at
        or before `after` are left out (see Scheduler._sleep)."""
        # A read: on SQLite, outside any transaction, so an idle worker's every loop does not
        # take the write lock that the other processes' writers wait for.
        async with self.read() as conn:
            row = (
                await conn.execute(
                    self._sql.next_due,
                    {
                        "job_keys": list(job_keys) or [""],
                        "pollers": list(pollers) or [""],
                        "after": after,
                    },
                )
            ).first()
        times = [t for t in row or () if t is not None]
        return min(_stamp(t) for t in times) if times else None

    # -- schedules and deadlines -----------------------------------------------------------------

    async def register_schedules(
        self, job_ids: Sequence[str], rows: Sequence[dict[str, Any]]
    ) -> None:
        """Records the schedules of `job_ids` (engine.schedules.registrations): a new one fires
        from its `next_fire_at`; a known one keeps its fire time and paused flag; a schedule
        these jobs no longer declare is removed."""
        if not job_ids:
            return
        async with self.begin() as conn:
            for job_id in job_ids:
                keep = [f"{r['expression']}|{r['timezone']}" for r in rows if r["job_id"] == job_id]
                await conn.execute(self._sql.prune_schedules, {"job_id": job_id, "keep": keep})
            if rows:
                await conn.execute(self._sql.register_schedule, list(rows))

    async def fire_schedules(
        self,
        job_keys: Sequence[str],
        plan: Callable[[Any, float], tuple[float, list[dict[str, Any]]]],
        limit: int = 50,
    ) -> int:
        """Fires the due schedules of these jobs; returns how many runs were created.

        `plan(row, now)` gives a due schedule's next fire time and the runs of its due ticks.
        Each schedule is moved on (guarded on the fire time read, and row-locked on PostgreSQL)
        in the transaction that inserts its runs: a tick gives one run whichever worker fires
        it, and a crash loses neither the move nor the runs.
        """
        if not job_keys:
            return 0
        now = clock.now()
        created = 0
        async with self.begin() as conn:
            due = (
                await conn.execute(
                    self._sql.due_schedules,
                    {"now": now, "job_keys": list(job_keys), "limit": limit},
                )
            ).all()
            for row in due:
                next_fire, runs = plan(row, now)
                last: tuple[float | None, str | None] = (None, None)
                for values in runs:
                    tick = values.pop("tick")
                    run_id, new = await self._create_run(
                        conn,
                        values["job_id"],
                        values["job_version"],
                        values["payload"],
                        values["idempotency_key"],
                        values["priority"],
                        values["concurrency"],
                        timeout=values["timeout"],
                    )
                    created += new
                    last = (tick, run_id)
                moved = await conn.execute(
                    self._sql.advance_schedule,
                    {
                        "job_id": row.job_id,
                        "expression": row.expression,
                        "timezone": row.timezone,
                        "due": row.next_fire_at,
                        "next": next_fire,
                        "tick": last[0],
                        "run_id": last[1],
                    },
                )
                if moved.rowcount != 1:
                    # Fired by another worker meanwhile: the row lock (PostgreSQL) and BEGIN
                    # IMMEDIATE (SQLite) rule it out; the guard keeps a duplicate a no-op anyway.
                    await conn.rollback()
                    return 0
            if created:
                await self._notify(conn)
        if created:
            self._wake_local()
        return created

    async def list_schedules(self, job_id: str | None = None) -> list[dict[str, Any]]:
        return await self._dicts(self._sql.list_schedules, {"job_id": job_id})

    async def set_schedules_paused(
        self,
        job_id: str,
        expression: str | None,
        paused: bool,
        next_after: Callable[[str, str, float], float],
    ) -> list[dict[str, Any]]:
        """Pauses or resumes the job's schedules (those with `expression`, if given); returns
        the schedules changed. A resumed schedule fires from its next tick after now: the
        ticks it missed while paused are not made up."""
        now = clock.now()
        changed = []
        async with self.begin() as conn:
            rows = (await conn.execute(self._sql.list_schedules, {"job_id": job_id})).all()
            for r in rows:
                if expression is not None and r.expression != expression:
                    continue
                if bool(r.paused) == paused:
                    continue
                upcoming = r.next_fire_at if paused else next_after(r.expression, r.timezone, now)
                await conn.execute(
                    self._sql.set_schedule_paused,
                    {
                        "job_id": job_id,
                        "expression": r.expression,
                        "timezone": r.timezone,
                        "paused": paused,
                        "next": upcoming,
                    },
                )
                changed.append(dict(r._mapping))
            if changed and not paused:
                await self._notify(conn)  # the schedulers sleeping until another due time
        if changed and not paused:
            self._wake_local()
        return changed

    async def cancel_expired(self, error: Callable[[Any], dict[str, Any]], limit: int = 100) -> int:
        """Cancels the unfinished runs past their deadline, each with `error(deadline)`
        recorded, and their open tasks; returns how many. The lease epoch moves on, so an
        execution still going cannot record anything after (fencing).

        Each run is locked as `engine runs cancel` locks it (parent, run, tasks, children), and
        on PostgreSQL in a transaction of its own: several runs in one would lock one family's
        child before another's parent, and deadlock with a child ending or a cancel. SQLite
        serializes writers anyway: there, one transaction saves a commit per run."""
        now = clock.now()
        if not await self._any_expired(now):
            return 0
        async with self.read() as conn:  # no lock: each run is locked in order by `_cancel`
            now = clock.now()
            rows = (await conn.execute(self._sql.expired_runs, {"now": now, "limit": limit})).all()
        canceled = 0
        for group in [[r] for r in rows] if self.is_postgres else [rows]:
            async with self.begin() as conn:
                done = 0
                for r in group:
                    _, row = await self._cancel(conn, r.id, error(r.deadline_at))
                    done += row is not None  # else it finished or was canceled meanwhile
                if done:
                    # The workers executing them hear of it and interrupt the step in flight.
                    await self._notify(conn)
            canceled += done
        if canceled:
            self._wake_local()
        return canceled

    async def _any_expired(self, now: float) -> bool:
        """Whether some unfinished run is past its deadline (a read: no row is locked)."""
        async with self.begin() as conn:
            return bool((await conn.execute(self._sql.any_expired, {"now": now})).scalar())

    # -- polls -----------------------------------------------------------------------------------

    async def claim_polls(self, pollers: Sequence[str], limit: int, hold: float) -> list[DuePoll]:
        """Due polls, each pushed `hold` seconds into the future so no one else takes it."""
        if not pollers:
            return []
        now = clock.now()
        if not await self._any_poll_due(now, pollers):
            return []
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

    async def _any_poll_due(self, now: float, pollers: Sequence[str]) -> bool:
        """Whether a poll may be due (engine.store_sqlite reads first, as `_any_ready`)."""
        return True

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
        poll_state: dict[str, Any],
        usage: dict[str, Any] | None = None,
    ) -> None:
        """Completes (or errors) a poll task and wakes its run (with its usage, if any)."""
        await self._patiently(
            "finishing a poll", lambda: self._finish_poll(poll, output, error, poll_state, usage)
        )

    async def _finish_poll(
        self,
        poll: DuePoll,
        output: Any,
        error: dict[str, Any] | None,
        poll_state: dict[str, Any],
        usage: dict[str, Any] | None = None,
    ) -> None:
        now = clock.now()
        async with self.begin() as conn:
            # The run's row before its task's, as a cancel and the run's own writes take them:
            # the other way round, a poll ending while its run is canceled deadlocks.
            await self._lock_run(conn, poll.run_id)
            woke = await self._settle_waiting(
                conn, poll.task_id, poll.run_id, output=output, error=error, poll_state=poll_state
            )
            if woke and usage is not None:
                values = {**_usage_defaults(usage), "id": poll.task_id, "recorded_at": now}
                await conn.execute(self._usage_sql.write_for_poll, values)
        if woke:
            self._wake_local()

    async def _settle_waiting(
        self,
        conn: AsyncConnection,
        task_id: int,
        run_id: str,
        *,
        output: Any = None,
        error: dict[str, Any] | None = None,
        poll_state: dict[str, Any] | None = None,
        output_type: str | None = None,
        wake_at: float | None = None,
    ) -> bool:
        """Completes (or errors) a WAITING task from outside its run, and wakes the run (now,
        or by `wake_at`), in the caller's transaction; False if the task no longer waits
        (someone settled it first).

        The one way anything but the run itself (a poll, an event, a child's end) ends a wait:
        the `status = 'WAITING'` guard makes a duplicate delivery a no-op. The caller calls
        `_wake_local()` after its transaction commits.
        """
        result = await conn.execute(
            self._sql.finish_poll,
            {
                "id": task_id,
                "status": "ERRORED" if error else "COMPLETED",
                "output": output,
                "output_type": output_type,
                "error": error,
                "now": clock.now(),
                "poll_state": poll_state,
            },
        )
        if result.rowcount != 1:
            return False
        at = clock.now() if wake_at is None else wake_at
        await conn.execute(self._sql.wake_run, {"id": run_id, "at": at})
        await self._notify(conn)
        return True

    # -- events and signals (engine.events) ------------------------------------------------------

    async def send_event(
        self, event_id: str, name: str, payload: Any, plan: PlanRuns | None = None, token: str = ""
    ) -> SentEvent:
        """Stores the event and delivers it, in one transaction: starts the runs `plan` makes of
        the jobs registered with `on_event=name` and the live workers (idempotency key
        `event:<id>`; `plan` may refuse the event by raising), and settles every wait it
        matches. An id already stored delivers nothing again.

        `token` is the caller's, one per send: a try that finds the id stored under it is a
        retry whose earlier try committed (its answer lost), and answers what that try did."""
        token = token or send_token()
        return await self._patiently(
            "sending an event", lambda: self._send_event(event_id, name, payload, plan, token)
        )

    async def _send_event(
        self, event_id: str, name: str, payload: Any, plan: PlanRuns | None, token: str
    ) -> SentEvent:
        sql = self._events_sql
        now = clock.now()
        async with self.begin() as conn:
            jobs = (await conn.execute(sql.jobs_on_event, {"name": name})).all()
            runs: list[StartOnEvent] = []
            if jobs and plan is not None:
                workers = (await conn.execute(self._sql.live_workers, {"now": now})).all()
                runs = plan([dict(r._mapping) for r in jobs], [dict(w._mapping) for w in workers])
            started = []
            for run in runs:
                run_id, _ = await self._create_run(
                    conn, *run[:2], payload, f"event:{event_id}", *run[2:4], timeout=run[4]
                )
                started.append(run_id)
            woke = await self._deliver(conn, name, payload)
            # Stored last, with what it did: an id sent before conflicts here, and everything
            # this send did is rolled back (a concurrent duplicate waited on the first one's
            # locks and found its waits settled and its runs created).
            values = {
                "id": event_id,
                "name": name,
                "payload": payload,
                "sent_at": now,
                "woke": len(woke),
                "started": len(started),
                "send_token": token,
                "run_ids": {"woke": woke, "started": started},
            }
            if (await conn.execute(sql.insert_event, values)).rowcount != 1:
                stored = (await conn.execute(sql.event_sender, {"id": event_id})).one()
                await conn.rollback()
                if stored.send_token != token:
                    return SentEvent(event_id, name, created=False)
                # This call's earlier try committed: answer what it did (and wake this
                # process's worker, which that try's lost answer did not).
                ids = stored.run_ids or {}
                woke, started = list(ids.get("woke", [])), list(ids.get("started", []))
            elif started:
                await self._notify(conn)
        if woke or started:
            self._wake_local()
        return SentEvent(event_id, name, True, woke, started)

    async def _deliver(self, conn: AsyncConnection, name: str, payload: Any) -> list[str]:
        """Settles the waits for event `name` that `payload` matches; the runs woken."""
        sql = self._events_sql
        wanted: dict[str, str] = {}  # digest -> canonical values
        for (keys,) in (await conn.execute(sql.keysets, {"name": name})).all():
            values = project(payload, keys)
            if values is not None:
                wanted[digest(keys, values)] = canonical(values)
        if not wanted:
            return []
        found = (
            await conn.execute(sql.matching_waits, {"name": name, "hashes": list(wanted)})
        ).all()
        # The digest found them; the values themselves decide (a digest collision is no match).
        waits = [w for w in found if canonical(w.match_values) == wanted[w.match_hash]]
        return await self._settle_all(conn, [(w.run_id, w.task_id) for w in waits], payload)

    async def _settle_all(
        self, conn: AsyncConnection, waits: Sequence[tuple[str, int]], output: Any
    ) -> list[str]:
        """Settles these (run id, task id) waits with `output`; the runs woken. Each run row is
        locked first, in id order, as a cancel or the run's own writes take it before its
        tasks: no deadlock, and a run that ended meanwhile is left alone."""
        woke: list[str] = []
        settled: list[int] = []
        locked: dict[str, str] = {}
        for run_id, task_id in sorted(waits):
            if run_id not in locked:
                locked[run_id] = await self._locked_status(conn, run_id)
            if locked[run_id] not in ("QUEUED", "RUNNING", "WAITING"):
                continue
            if await self._settle_waiting(conn, task_id, run_id, output=output):
                settled.append(task_id)
                if run_id not in woke:
                    woke.append(run_id)
        if settled:
            await conn.execute(self._events_sql.delete_waits, {"ids": settled})
        return woke

    async def list_events(self, name: str | None, limit: int) -> list[dict[str, Any]]:
        return await self._dicts(self._events_sql.list_events, {"name": name, "limit": limit})

    async def send_signal(
        self, run_id: str, name: str, payload: Any, dedupe_id: str, token: str = ""
    ) -> SentSignal:
        """Delivers a signal to the run's first wait for `name`, or keeps it in the run's mailbox
        for the next one. A finished run refuses it; a run that has a signal with `dedupe_id`
        already gets nothing (`created` False), unless that signal is this call's own (its
        `token`: an earlier try committed and its answer was lost), which answers as it would
        have. Retried on transient errors, being idempotent by `dedupe_id`."""
        token = token or send_token()
        return await self._patiently(
            "sending a signal",
            lambda: self._send_signal(run_id, name, payload, dedupe_id, token),
        )

    async def _send_signal(
        self, run_id: str, name: str, payload: Any, dedupe_id: str, token: str
    ) -> SentSignal:
        sql = self._events_sql
        now = clock.now()
        async with self.begin() as conn:
            # The run row locked first (PostgreSQL): two sends of one id to one run take turns,
            # and the second sees the first's row.
            status = await self._locked_status(conn, run_id)
            ident = {"run_id": run_id, "dedupe_id": dedupe_id}
            kept = (await conn.execute(sql.signal_by_id, ident)).first()
            if kept is not None:
                if kept.send_token != token:
                    return SentSignal(dedupe_id, run_id, name, created=False)
                # This call's earlier try committed: it woke a wait iff it was taken at once.
                woke = kept.task_id is not None and kept.consumed_at == kept.sent_at
                return SentSignal(dedupe_id, run_id, name, True, woke)
            if status not in ("QUEUED", "RUNNING", "WAITING"):
                raise InvalidRunStateError(
                    f"run {run_id} is already {status}: a signal goes only to a QUEUED, "
                    "RUNNING or WAITING run"
                )
            wait = (await conn.execute(sql.signal_wait, {"run_id": run_id, "name": name})).first()
            woke = wait is not None and await self._settle_waiting(
                conn, wait.task_id, run_id, output=payload
            )
            if woke:
                assert wait is not None
                await conn.execute(sql.delete_waits, {"ids": [wait.task_id]})
            values = {
                **ident,
                "name": name,
                "payload": payload,
                "sent_at": now,
                "task_id": wait.task_id if woke and wait is not None else None,
                "consumed_at": now if woke else None,
                "send_token": token,
            }
            if (await conn.execute(sql.insert_signal, values)).rowcount != 1:
                await conn.rollback()  # not reached while the run row is locked: a backstop
                return SentSignal(dedupe_id, run_id, name, created=False)
        if woke:
            self._wake_local()
        return SentSignal(dedupe_id, run_id, name, True, woke)

    async def record_wait(
        self, run_id: str, epoch: int, task: TaskWrite, wait: Wait, worker: str | None
    ) -> tuple[str, Any] | None:
        """Records a wait for an event or a signal (fenced) with its index entry; a signal
        already in the run's mailbox is consumed at once. Returns the task's (status, output),
        or None when the execution no longer holds the lease."""
        return await self._patiently(
            "recording a wait", lambda: self._record_wait(run_id, epoch, task, wait, worker)
        )

    async def _record_wait(
        self, run_id: str, epoch: int, task: TaskWrite, wait: Wait, worker: str | None
    ) -> tuple[str, Any] | None:
        sql = self._events_sql
        now = clock.now()
        ident = {"run_id": run_id, "parent_path": task.parent_path, "key": task.key}
        async with self.begin() as conn:
            if (await conn.execute(sql.run_epoch, {"id": run_id})).scalar() != epoch:
                await conn.rollback()
                return None
            values = {**ident, **task.__dict__, "worker": worker}
            await conn.execute(sql.insert_task, values)
            row = (await conn.execute(sql.task, ident)).one()
            if row.status != "WAITING":  # recorded by an earlier try of this same write
                return row.status, row.output
            if wait.kind == "signal":
                kept = (
                    await conn.execute(sql.oldest_signal, {"run_id": run_id, "name": wait.name})
                ).first()
                if kept is not None:
                    await conn.execute(
                        sql.complete_task, {"id": row.id, "output": kept.payload, "now": now}
                    )
                    await conn.execute(
                        sql.consume_signal, {"id": kept.id, "task_id": row.id, "now": now}
                    )
                    return "COMPLETED", kept.payload
            await conn.execute(
                sql.insert_wait,
                {"task_id": row.id, "run_id": run_id, "created_at": now, **wait.__dict__},
            )
            if wait.match_keys is not None:
                keyset = {"name": wait.name, "match_keys": wait.match_keys}
                await conn.execute(sql.insert_keyset, keyset)
        return "WAITING", None

    async def expire_wait(
        self, run_id: str, epoch: int, parent_path: str, key: str
    ) -> tuple[str, Any] | None:
        """Ends a wait whose timeout passed with None (fenced), unless an event or a signal
        settled it first: returns the task's (status, output), or None when the lease is lost."""
        return await self._patiently(
            "ending a wait", lambda: self._expire_wait(run_id, epoch, parent_path, key)
        )

    async def _expire_wait(
        self, run_id: str, epoch: int, parent_path: str, key: str
    ) -> tuple[str, Any] | None:
        sql = self._events_sql
        ident = {"run_id": run_id, "parent_path": parent_path, "key": key}
        async with self.begin() as conn:
            if (await conn.execute(sql.run_epoch, {"id": run_id})).scalar() != epoch:
                await conn.rollback()
                return None
            row = (await conn.execute(sql.task, ident)).one()
            if row.status != "WAITING":
                return row.status, row.output
            await conn.execute(sql.expire, {"id": row.id, "completed_at": clock.now()})
            await conn.execute(sql.delete_waits, {"ids": [row.id]})
        return "COMPLETED", None

    # -- streams (engine.streams) ---------------------------------------------------------------

    async def write_chunks(self, run_id: str, epoch: int, chunks: Sequence[ChunkWrite]) -> bool:
        """Records stream chunks in one transaction, fenced; False when the execution no longer
        holds the lease. A chunk already recorded (same writer and n) is left as it was."""
        try:
            return await self._write_chunks(run_id, epoch, chunks)
        except DatabaseError as exc:
            if not exc.transient:
                raise
        return await self._patiently(
            "recording stream chunks", lambda: self._write_chunks(run_id, epoch, chunks)
        )

    async def stream_writers(self, run_id: str, stream: str) -> list[tuple[str, int, int, int]]:
        """(task, attempt, last n, last seq) of each writer of the run's stream so far."""

        async def read() -> list[tuple[str, int, int, int]]:
            async with self.begin() as conn:
                rows = await conn.execute(
                    self._stream_sql.writers, {"run_id": run_id, "stream": stream}
                )
                return [(r.task, int(r.attempt), int(r.n), int(r.seq)) for r in rows]

        return await self._patiently("loading a stream", read)

    async def streams_of_run(self, run_id: str) -> list[dict[str, Any]]:
        """The run's streams: name, chunks, last seq and when the last chunk was written."""
        return await self._dicts(self._stream_sql.streams_of_run, {"run_id": run_id})

    # -- inspection and control ------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any]:
        async with self.read() as conn:
            row = (await conn.execute(self._sql.get_run, {"id": run_id})).first()
        if row is None:
            raise RunNotFoundError(
                f"no run has id {run_id!r}: `engine runs list` shows the runs there are"
            )
        return dict(row._mapping)

    async def _dicts(self, statement: Executable, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Every row `statement` returns, as the plain dicts the read API hands out (read
        outside any transaction: on SQLite, without waiting for the write lock)."""
        async with self.read() as conn:
            rows = (await conn.execute(statement, params)).all()
        return [dict(r._mapping) for r in rows]

    async def list_runs(
        self,
        job_id: str | None,
        status: str | None,
        limit: int,
        version: str | None = None,
        parent: str | None = None,
    ) -> list[dict[str, Any]]:
        params = {
            "job_id": job_id,
            "status": status,
            "limit": limit,
            "version": version,
            "parent": parent,
        }
        return await self._dicts(self._sql.list_runs, params)

    async def get_tasks(self, run_id: str) -> list[dict[str, Any]]:
        return await self._dicts(self._sql.get_tasks, {"run_id": run_id})

    async def get_attempts(self, run_id: str) -> list[dict[str, Any]]:
        """The run's kept earlier attempts (engine_task_attempts), by task id and attempt."""
        return await self._dicts(self._sql.get_attempts, {"run_id": run_id})

    async def get_usage(self, run_id: str) -> list[dict[str, Any]]:
        """The run's usage rows, each with its task's `parent_path` and `key`."""
        return await self._dicts(self._usage_sql.for_run, {"run_id": run_id})

    async def usage_report(
        self, since: float | None = None, job_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Calls, runs and token sums by day (UTC), job, provider and model."""
        params = {"since": since, "job_id": job_id}
        return await self._dicts(self._usage_sql.report, params)

    async def get_logs(self, run_id: str) -> list[dict[str, Any]]:
        return await self._dicts(self._sql.get_logs, {"run_id": run_id})

    async def waits(
        self, run_ids: Sequence[str]
    ) -> tuple[dict[str, list[dict[str, Any]]], dict[tuple[str, str], int]]:
        """For `engine.waiting`: the WAITING tasks of these runs (by run id), and the live
        RUNNING count per (job id, concurrency key)."""
        now = clock.now()
        async with self.begin() as conn:
            tasks = (
                (await conn.execute(self._sql.waiting_tasks, {"ids": list(run_ids)})).all()
                if run_ids
                else []
            )
            counts = (await conn.execute(self._sql.running_counts, {"now": now})).all()
        by_run: dict[str, list[dict[str, Any]]] = {}
        for t in tasks:
            by_run.setdefault(t.run_id, []).append(dict(t._mapping))
        return by_run, {(c.job_id, c.concurrency_key): int(c.running) for c in counts}

    async def cancel_run(self, run_id: str) -> str:
        """Cancels a QUEUED, WAITING or RUNNING run, and its children that have not ended
        (recursively); returns its status before. A canceled child settles its parent's task
        (the parent's `io.invoke` raises ChildRunError).

        A run that finished first (even a moment before) is left alone: InvalidRunStateError.
        """
        async with self.begin() as conn:
            before, row = await self._cancel(conn, run_id, None)
            if row is None:
                # Leaving the block by raising rolls the transaction back.
                raise InvalidRunStateError(
                    f"run {run_id} is already {before}: only QUEUED, WAITING and RUNNING "
                    "runs can be canceled"
                )
            # The worker executing it hears of it at once and interrupts the step in flight.
            await self._notify(conn)
        self._wake_local()
        return before

    async def _cancel(
        self, conn: AsyncConnection, run_id: str, error: dict[str, Any] | None
    ) -> tuple[str, Any]:
        """Cancels one open run with `error` recorded (None: a plain cancel), in the caller's
        transaction: (its status before, the cancel's row, or None when it had ended).

        Lock order, the same as a run's own end and every settle: the parent's row, the run's,
        the run's tasks, then its children's rows and tasks (PostgreSQL; SQLite serializes
        writers anyway). The parent link never changes, so it is read before any lock."""
        parent = (await conn.execute(self._children_sql.parent_of, {"id": run_id})).scalar()
        if parent is not None:
            await self._lock_run(conn, parent)
        before = await self._locked_status(conn, run_id)
        if before not in ("QUEUED", "WAITING", "RUNNING"):
            return before, None
        now = clock.now()  # once the row is ours: nothing was recorded after this
        values = {"id": run_id, "now": now, "error": error}
        row = (await conn.execute(self._sql.cancel_run, values)).first()
        if row is None:  # the status guard: the lock above makes this a safety net only
            return await self._locked_status(conn, run_id), None
        await conn.execute(self._sql.cancel_open_tasks, {"run_id": run_id, "now": now})
        await self._run_ended(conn, run_id, row, "CANCELED", cascade=True, error=error)
        return before, row

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
                result = await conn.execute(self._sql.retry_run, {"id": run_id, "now": now})
                changed = result.rowcount == 1
            if not changed:
                raise InvalidRunStateError(
                    f"run {run_id} is {status}: only a FAILED run can be retried"
                )
            await conn.execute(self._sql.keep_ended_attempts, {"run_id": run_id})
            await conn.execute(self._sql.reopen_failed_tasks, {"run_id": run_id, "now": now})
            await self._notify(conn)
        self._wake_local()

    # -- child runs (engine.children) ------------------------------------------------------------

    async def start_children(
        self,
        run_id: str,
        epoch: int,
        starts: Sequence[ChildStart],
        logs: Sequence[LogWrite] = (),
        worker: str | None = None,
    ) -> bool:
        """Creates child runs with their parent's WAITING invoke tasks, in one transaction
        fenced on the parent's lease epoch; False when the execution no longer holds it.
        Idempotent: the same starts committed again change nothing."""
        return await self._patiently(
            "starting child runs",
            lambda: self._start_children(run_id, epoch, starts, logs, worker),
        )

    async def _start_children(
        self,
        run_id: str,
        epoch: int,
        starts: Sequence[ChildStart],
        logs: Sequence[LogWrite],
        worker: str | None,
    ) -> bool:
        now = clock.now()
        sql = self._children_sql
        tasks, runs = [], []
        for start in starts:
            task = start.task
            ident = {"run_id": run_id, "parent_path": task.parent_path, "key": task.key}
            tasks.append(
                {**ident, "name": task.name, "attempts": task.attempts, "params": task.params,
                 "seq": task.seq, "now": now, "worker": worker}
            )  # fmt: skip
            key, limit = start.concurrency if start.concurrency is not None else (None, None)
            runs.append(
                {**ident, "id": start.id, "job_id": start.job_id, "job_version": start.version,
                 "payload": start.payload, "now": now, "priority": start.priority,
                 "rank_at": now - start.priority * PRIORITY_STEP, "concurrency_key": key,
                 "concurrency_limit": limit,
                 "deadline_at": None if start.timeout is None else now + start.timeout}
            )  # fmt: skip
        async with self.begin() as conn:
            fenced = await conn.execute(sql.fence, {"run_id": run_id, "epoch": epoch})
            if fenced.first() is None:
                await conn.rollback()
                return False
            await conn.execute(sql.open_invoke, tasks)
            await conn.execute(sql.create_child, runs)
            if logs:
                await self._write_logs(conn, run_id, logs)
            await self._notify(conn)
        self._wake_local()
        return True

    async def _run_ended(
        self,
        conn: AsyncConnection,
        run_id: str,
        row: Any,
        status: str,
        *,
        cascade: bool,
        output: Any = None,
        output_type: str | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """What a run's end does to the runs around it, in the transaction that ends it: its
        children that have not ended are canceled (`cascade`), and a child settles its
        parent's invoke task and wakes the parent. True when a parent was woken (the caller
        calls `_wake_local()` once committed)."""
        if cascade:
            await self._cancel_descendants(conn, [run_id])
        if row.parent_task_id is None:
            return False
        outcome = children.parent_outcome(run_id, row.job_id, status, output, output_type, error)
        # The last child wakes its parent now; one ending while others run, a little later
        # (engine.children, CHILD_WAKE_DELAY), so that their ends share a replay.
        others = {"run_id": row.parent_run_id, "task_id": row.parent_task_id}
        waits = await conn.execute(self._children_sql.other_children_open, others)
        wake_at = clock.now() + children.CHILD_WAKE_DELAY if waits.first() is not None else None
        return await self._settle_waiting(
            conn, row.parent_task_id, row.parent_run_id, wake_at=wake_at, **outcome
        )

    async def _cancel_descendants(self, conn: AsyncConnection, run_ids: list[str]) -> None:
        """Cancels the open children of these runs, and theirs, one generation a statement;
        a canceled child's own parent is ending, so it settles nothing."""
        now = clock.now()
        sql = self._children_sql
        canceled = False
        while run_ids:
            params = {"ids": run_ids, "now": now, "error": children.CANCELED_WITH_PARENT}
            run_ids = [r.id for r in (await conn.execute(sql.cancel_children, params)).all()]
            if run_ids:
                canceled = True
                await conn.execute(sql.cancel_tasks_of, {"ids": run_ids, "now": now})
        if canceled:
            # Workers executing them hear of it and stop; freed concurrency slots are reused.
            await self._notify(conn)

    async def _lock_run(self, conn: AsyncConnection, run_id: str) -> None:
        """Locks a run's row (PostgreSQL) ahead of what the caller writes next: a parent's
        before its child's, a run's before its tasks'. Everything that ends a run or settles a
        wait takes rows in that order, so two of them meeting wait for each other instead of
        deadlocking (and retrying as a transient error)."""
        if self._children_sql.lock_run is not None:
            await conn.execute(self._children_sql.lock_run, {"id": run_id})

    async def run_links(self, run: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
        """For `runs show`: the path of the parent's task that started `run` ("a/b"), if it
        is a child, and its children in the order the run reached them."""
        sql = self._children_sql
        async with self.read() as conn:
            path = None
            if run.get("parent_task_id") is not None:
                found = (await conn.execute(sql.task_path, {"id": run["parent_task_id"]})).first()
                if found is not None:
                    path = "/".join((*json.loads(found.parent_path), found.key))
            rows = (await conn.execute(sql.children, {"id": run["id"]})).all()
        listed = []
        for r in rows:
            child = dict(r._mapping)
            parent_path, key = child.pop("parent_path"), child.pop("key")
            child["task"] = None if key is None else "/".join((*json.loads(parent_path), key))
            listed.append(child)
        return path, listed

    async def descendant_usage(self, run_id: str) -> list[dict[str, Any]]:
        """The usage rows of every descendant of a run (its children, theirs...)."""
        return await self._dicts(self._children_sql.descendant_usage, {"id": run_id})

    # -- internals -------------------------------------------------------------------------------

    async def _slot_freed(self, conn: AsyncConnection, concurrency_key: str | None) -> None:
        """A run with a concurrency limit stopped running: a run queued behind it may go now,
        on any worker (the others hear it by NOTIFY; this process's scheduler wakes when an
        execution ends anyway)."""
        if concurrency_key is not None:
            await self._notify(conn)

    async def _write_logs(
        self, conn: AsyncConnection, run_id: str, logs: Sequence[LogWrite]
    ) -> None:
        await conn.execute(
            self._sql.write_log, [{"run_id": run_id, **log.__dict__} for log in logs]
        )


def _stamp(value: Any) -> float:
    """A timestamp column as epoch seconds (a subquery's MIN comes back untyped on SQLite)."""
    if isinstance(value, str):
        from datetime import UTC, datetime

        parsed = datetime.fromisoformat(value)
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return float(value.timestamp())


def _usage_defaults(usage: dict[str, Any]) -> dict[str, Any]:
    """The row's values, bounded to what the columns hold: a usage the database would refuse
    must not cost the task its recorded outcome."""
    values = {name: usage.get(name) for name in USAGE_FIELDS}
    for name in USAGE_FIELDS:
        if name.endswith("_tokens"):
            values[name] = min(max(int(values[name] or 0), 0), 2**31 - 1)
    values["images"] = min(max(int(values["images"] or 0), 0), 2**31 - 1)
    for name in ("image_size", "image_quality"):
        values[name] = None if values[name] is None else str(values[name])[:40]
    values["provider"] = str(values["provider"] or "unknown")[:40]
    if values["model"] is not None:
        values["model"] = str(values["model"])[:200]
    return values


def _usage_values(run_id: str, task: TaskWrite) -> dict[str, Any]:
    assert task.usage is not None
    return {
        **_usage_defaults(task.usage),
        "run_id": run_id,
        "parent_path": task.parent_path,
        "key": task.key,
        "recorded_at": task.completed_at,
    }


def _dialect_class(url: URL) -> type[Store]:
    # Imported here: each dialect's module builds on this one.
    if url.get_backend_name() == "postgresql":
        from .store_postgres import PostgresStore

        return PostgresStore
    from .store_sqlite import SQLiteStore

    return SQLiteStore
