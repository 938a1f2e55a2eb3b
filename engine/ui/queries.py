"""What the dashboard reads from the task log, through the engine's store and its tables.

Every value handed to a page goes through `engine.secrets.scrub`: errors in the task log are
scrubbed when recorded, and this catches what the engine knows of in this process (the database
password) in payloads and outputs too.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .. import clock, secrets, waiting
from ..client import Engine
from ..schema import RUN_STATUSES, runs, schedules, stream_chunks, tasks
from ..schema import jobs as jobs_table
from ..versions import version_key

PAGE_SIZE = 50
# Chunks of a stream per page of /runs/RUN/streams/NAME.
STREAM_PAGE = 1000
JOB_IDS_SECONDS = 5.0

_LIST_COLUMNS = (
    runs.c.id,
    runs.c.job_id,
    runs.c.job_version,
    runs.c.status,
    runs.c.idempotency_key,
    runs.c.created_at,
    runs.c.started_at,
    runs.c.completed_at,
    # For "waiting for" (engine.waiting).
    runs.c.wake_at,
    runs.c.concurrency_key,
    runs.c.concurrency_limit,
)


@dataclass(frozen=True)
class RunFilter:
    """The runs page's filters; every field optional. `query` is a run id (or a prefix of one
    of at least 8 characters) or an idempotency key."""

    job: str | None = None
    status: str | None = None
    version: str | None = None
    query: str | None = None
    # Created at or after `since`, before `until` (UTC); the texts as given, for the form.
    since: datetime | None = None
    until: datetime | None = None
    since_text: str | None = None
    until_text: str | None = None
    problems: tuple[str, ...] = ()

    @classmethod
    def from_params(cls, params: Any) -> RunFilter:
        def get(name: str) -> str | None:
            value = str(params.get(name) or "").strip()
            return value or None

        status = get("status")
        problems = []
        if status and status.upper() not in RUN_STATUSES:
            problems.append(
                f"status {status!r} is not a run status: one of {', '.join(RUN_STATUSES)}"
            )
        times: dict[str, datetime | None] = {}
        for name in ("from", "to"):
            text = get(name)
            times[name] = None
            if text:
                try:
                    stamp = datetime.fromisoformat(text)
                except ValueError:
                    problems.append(f"{name} {text!r} is not a date: write e.g. 2026-11-30T09:00")
                    continue
                times[name] = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        return cls(
            job=get("job"),
            status=status.upper() if status and status.upper() in RUN_STATUSES else None,
            version=get("version"),
            query=get("q"),
            since=times["from"],
            until=times["to"],
            since_text=get("from"),
            until_text=get("to"),
            problems=tuple(problems),
        )

    def where(self) -> list[Any]:
        clauses: list[Any] = []
        if self.job:
            clauses.append(runs.c.job_id == self.job)
        if self.status:
            clauses.append(runs.c.status == self.status)
        if self.version:
            clauses.append(runs.c.job_version == self.version)
        if self.since:
            clauses.append(runs.c.created_at >= self.since)
        if self.until:
            clauses.append(runs.c.created_at < self.until)
        if self.query:
            matches = [runs.c.id == self.query, runs.c.idempotency_key == self.query]
            if len(self.query) >= 8:
                # A prefix of the primary key: a range scan of its index, never a full scan.
                matches.append(and_(runs.c.id >= self.query, runs.c.id < self.query + "\uffff"))
            clauses.append(or_(*matches))
        return clauses


class Queries:
    """Reads for the dashboard on one `Engine` (its store's connection pool)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.store = engine.store
        self._job_ids: tuple[float, list[str]] | None = None

    async def list_runs(
        self, where: RunFilter, after: str | None = None, limit: int = PAGE_SIZE
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of runs, newest first, and the id to pass as `after` for the next page.

        Keyset pagination on (created_at, id): a page deep in 100,000 runs costs what the first
        one does, where OFFSET would read every row before it. One read connection, one
        statement (two with `after`, more only for what QUEUED and WAITING runs wait for):
        on a loaded machine every round trip to the database costs a scheduling delay.
        """
        clauses = where.where()
        async with self.store.read() as conn:
            if after:
                row = (
                    await conn.execute(select(runs.c.created_at).where(runs.c.id == after))
                ).first()
                if row is not None:
                    # The first clause alone bounds the index range scan; the OR breaks ties.
                    clauses.append(runs.c.created_at <= row.created_at)
                    clauses.append(
                        or_(
                            runs.c.created_at < row.created_at,
                            and_(runs.c.created_at == row.created_at, runs.c.id < after),
                        )
                    )
            statement = (
                select(*_LIST_COLUMNS)
                .where(*clauses)
                .order_by(runs.c.created_at.desc(), runs.c.id.desc())
                .limit(limit + 1)
            )
            rows = [dict(r._mapping) for r in (await conn.execute(statement)).all()]
            more = len(rows) > limit
            rows = rows[:limit]
            await self._add_waiting_for(conn, rows)
        return secrets.scrub(rows), rows[-1]["id"] if more and rows else None

    async def add_waiting_for(self, rows: list[dict[str, Any]]) -> None:
        """Sets `waiting_for` (engine.waiting's summary, or None) on each run row."""
        async with self.store.read() as conn:
            await self._add_waiting_for(conn, rows)

    async def _add_waiting_for(self, conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
        # Only what the rows need: WAITING runs' tasks, and the running counts only when a
        # QUEUED run has a concurrency limit.
        waiting_ids = [r["id"] for r in rows if r["status"] == "WAITING"]
        by_run: dict[str, list[dict[str, Any]]] = {}
        if waiting_ids:
            found = await conn.execute(
                select(*_WAIT_COLUMNS).where(
                    tasks.c.status == "WAITING", tasks.c.run_id.in_(waiting_ids)
                )
            )
            for t in found.all():
                by_run.setdefault(t.run_id, []).append(dict(t._mapping))
        running: dict[tuple[str, str], int] = {}
        now = clock.utcnow()
        if any(r["status"] == "QUEUED" and r.get("concurrency_limit") for r in rows):
            counts = await conn.execute(
                select(runs.c.job_id, runs.c.concurrency_key, func.count())
                .where(
                    runs.c.status == "RUNNING",
                    runs.c.concurrency_key.is_not(None),
                    runs.c.lease_expires_at >= now,
                )
                .group_by(runs.c.job_id, runs.c.concurrency_key)
            )
            running = {(c[0], c[1]): int(c[2]) for c in counts.all()}
        for row in rows:
            found_wait = waiting.waiting_for(row, by_run.get(row["id"], []), running, now)
            row["waiting_for"] = found_wait["summary"] if found_wait else None

    async def job_ids(self) -> list[str]:
        """The registered jobs' ids (the runs page's filter suggestions), read at most every
        JOB_IDS_SECONDS: jobs are registered rarely, and the runs page is read often."""
        now = time.monotonic()
        if self._job_ids is None or now - self._job_ids[0] > JOB_IDS_SECONDS:
            async with self.store.read() as conn:
                found = await conn.execute(
                    select(jobs_table.c.job_id).distinct().order_by(jobs_table.c.job_id)
                )
                self._job_ids = (now, [r.job_id for r in found.all()])
        return self._job_ids[1]

    async def run(self, run_id: str) -> dict[str, Any]:
        """The run's row (RunNotFoundError when there is none)."""
        return secrets.scrub(await self.store.get_run(run_id))  # type: ignore[no-any-return]

    async def links(self, run: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
        """The parent's task that started the run ("a/b"), if it is a child run, and its
        child runs: [{id, job_id, job_version, status, task, created_at, completed_at}]."""
        return await self.store.run_links(run)

    async def tasks(self, run_id: str) -> list[dict[str, Any]]:
        """The run's tasks as a tree (`children`), each level in the order the run reached it.

        Without their values (params, output, error): a run of 1,000 tasks would carry them all
        into the page; each task's body (engine.ui.pages.task_body) is read when opened."""
        async with self.store.read() as conn:
            found = await conn.execute(
                select(*_TREE_COLUMNS)
                .where(tasks.c.run_id == run_id)
                .order_by(tasks.c.seq, tasks.c.id)
            )
            rows = secrets.scrub([dict(r._mapping) for r in found.all()])
        by_path: dict[tuple[str, ...], dict[str, Any]] = {}
        roots: list[dict[str, Any]] = []
        parsed = [(tuple(json.loads(t["parent_path"])), t) for t in rows]
        for parent, task in sorted(parsed, key=lambda p: (len(p[0]), p[1]["seq"])):
            node = {**task, "children": [], "depth": len(parent)}
            by_path[(*parent, task["key"])] = node
            (by_path[parent]["children"] if parent in by_path else roots).append(node)
        return roots

    async def run_state(self, run_id: str) -> tuple[str, str] | None:
        """(the run's status, a digest of everything its page shows that can change), read
        with two narrow queries; None when there is no such run."""
        async with self.store.read() as conn:
            run = (
                await conn.execute(
                    select(runs.c.status, runs.c.started_at, runs.c.completed_at).where(
                        runs.c.id == run_id
                    )
                )
            ).first()
            if run is None:
                return None
            rows = (
                await conn.execute(
                    select(*_STATE_COLUMNS).where(tasks.c.run_id == run_id).order_by(tasks.c.id)
                )
            ).all()
        return run.status, state_digest(run._mapping, (r._mapping for r in rows))

    async def overview(self, limit: int = PAGE_SIZE) -> Overview:
        """Registered jobs (versions, schemas, live workers, newest runs), live workers and
        the runs each holds, and up to `limit` waiting runs with what each waits for."""
        versions, workers = await self.store.job_versions()
        async with self.store.read() as conn:
            held = (
                await conn.execute(
                    select(runs.c.id, runs.c.lease_owner).where(
                        runs.c.status == "RUNNING", runs.c.lease_owner.is_not(None)
                    )
                )
            ).all()
            waits = (
                await conn.execute(
                    select(
                        tasks.c.run_id,
                        tasks.c.key,
                        tasks.c.kind,
                        tasks.c.due_at,
                        tasks.c.poller,
                        tasks.c.next_poll_at,
                        runs.c.job_id,
                        runs.c.wake_at,
                    )
                    .join(runs, runs.c.id == tasks.c.run_id)
                    .where(tasks.c.status == "WAITING", runs.c.status == "WAITING")
                    .order_by(tasks.c.due_at)
                    .limit(limit)
                )
            ).all()
        running: dict[str, list[str]] = {}
        for row in held:
            running.setdefault(row.lease_owner, []).append(row.id)
        by_job: dict[str, list[dict[str, Any]]] = {}
        for row in versions:
            by_job.setdefault(row["job_id"], []).append(row)
        live = live_versions_by_job(workers)
        jobs = []
        for job_id, entries in sorted(by_job.items()):
            recent, _ = await self.list_runs(RunFilter(job=job_id), limit=5)
            ordered = sorted(entries, key=lambda r: version_key(r["version"]))
            listed: list[dict[str, Any]] = [
                {
                    "version": r["version"],
                    "schema": r["payload_schema"],
                    "registered_at": r["registered_at"],
                    "workers": live.get((job_id, r["version"]), []),
                }
                for r in ordered
            ]
            jobs.append({"job_id": job_id, "versions": listed, "recent": recent})
        found = await self.schedules()
        waiting_runs = [dict(w._mapping) for w in waits]
        return Overview(secrets.scrub(jobs), workers, running, waiting_runs, found)

    async def task(self, run_id: str, task_id: int) -> dict[str, Any] | None:
        """One task of the run, values included (None when the run has no such task)."""
        async with self.store.read() as conn:
            found = await conn.execute(
                select(*_TREE_COLUMNS, tasks.c.params, tasks.c.output, tasks.c.error).where(
                    tasks.c.run_id == run_id, tasks.c.id == task_id
                )
            )
            row = found.first()
        return None if row is None else secrets.scrub(dict(row._mapping))

    async def streams(self, run_id: str) -> list[dict[str, Any]]:
        """The run's streams (io.stream): [{stream, chunks, last_seq, last_at}], by name."""
        c = stream_chunks.c
        async with self.store.read() as conn:
            found = await conn.execute(
                select(
                    c.stream,
                    func.count().label("chunks"),
                    func.max(c.seq).label("last_seq"),
                    func.max(c.written_at).label("last_at"),
                )
                .where(c.run_id == run_id)
                .group_by(c.stream)
                .order_by(c.stream)
            )
            rows = [dict(r._mapping) for r in found.all()]
        return rows

    async def stream_page(
        self, run_id: str, stream: str, after: int, limit: int = STREAM_PAGE
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Up to `limit` chunks of the stream after position `after`, in order, and the
        position to read on from (None: no more for now)."""
        c = stream_chunks.c
        async with self.store.read() as conn:
            found = await conn.execute(
                select(c.seq, c.task, c.attempt, c.data, c.written_at)
                .where(c.run_id == run_id, c.stream == stream, c.seq > after)
                .order_by(c.seq)
                .limit(limit + 1)
            )
            rows = [dict(r._mapping) for r in found.all()]
        more = len(rows) > limit
        rows = rows[:limit]
        for row in rows:
            row["task"] = "/".join(json.loads(row["task"]))
        return secrets.scrub(rows), rows[-1]["seq"] if more else None

    async def schedules(self) -> dict[str, list[dict[str, Any]]]:
        """Each job's schedules (engine.schedules): expression, timezone, paused, next fire
        time, last tick and the run it made."""
        async with self.store.read() as conn:
            found = await conn.execute(
                select(schedules).order_by(
                    schedules.c.job_id, schedules.c.expression, schedules.c.timezone
                )
            )
            rows = [dict(r._mapping) for r in found.all()]
        by_job: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_job.setdefault(row["job_id"], []).append(row)
        return by_job

    async def usage(self, run_id: str) -> list[dict[str, Any]]:
        """The run's usage rows (tokens, model, rate-limit headers of paid calls)."""
        return await self.store.get_usage(run_id)

    async def logs(self, run_id: str) -> list[dict[str, Any]]:
        return secrets.scrub(await self.store.get_logs(run_id))  # type: ignore[no-any-return]

    async def jobs(self) -> list[dict[str, Any]]:
        """Each registered job with its versions (natural order) and their payload schemas."""
        rows, _ = await self.store.job_versions()
        by_job: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_job.setdefault(row["job_id"], []).append(row)
        return [
            {
                "job_id": job_id,
                "versions": sorted(
                    ({"version": r["version"], "schema": r["payload_schema"]} for r in entries),
                    key=lambda v: version_key(v["version"]),
                ),
            }
            for job_id, entries in sorted(by_job.items())
        ]


# A task in the run page's tree: everything but its values.
_TREE_COLUMNS = (
    tasks.c.id,
    tasks.c.parent_path,
    tasks.c.key,
    tasks.c.kind,
    tasks.c.name,
    tasks.c.status,
    tasks.c.attempts,
    tasks.c.due_at,
    tasks.c.poller,
    tasks.c.next_poll_at,
    tasks.c.seq,
    tasks.c.started_at,
    tasks.c.completed_at,
)

# What engine.waiting reads of a WAITING task.
_WAIT_COLUMNS = (
    tasks.c.run_id,
    tasks.c.key,
    tasks.c.kind,
    tasks.c.name,
    tasks.c.params,
    tasks.c.status,
    tasks.c.attempts,
    tasks.c.error,
    tasks.c.due_at,
    tasks.c.poller,
    tasks.c.next_poll_at,
)

_STATE_COLUMNS = (
    tasks.c.id,
    tasks.c.status,
    tasks.c.attempts,
    tasks.c.started_at,
    tasks.c.completed_at,
)


def state_digest(run: Any, task_rows: Iterable[Any]) -> str:
    """A digest of a run's state and its tasks' (what `run_state` reads)."""
    parts = [repr((run["status"], run["started_at"], run["completed_at"]))]
    ordered = sorted(task_rows, key=lambda t: t["id"])
    parts += [repr(tuple(t[c.name] for c in _STATE_COLUMNS)) for t in ordered]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


class Overview:
    """The jobs and workers page's reads (engine.ui.queries.Queries.overview)."""

    def __init__(
        self,
        jobs: list[dict[str, Any]],
        workers: list[dict[str, Any]],
        running: dict[str, list[str]],
        waiting: list[dict[str, Any]],
        schedules: dict[str, list[dict[str, Any]]],
    ) -> None:
        self.jobs = jobs
        self.schedules = schedules  # job id -> its schedules
        self.workers = workers
        self.running = running  # worker id -> ids of the runs it holds
        self.waiting = waiting  # WAITING tasks of WAITING runs: what each run waits for


def live_versions_by_job(workers: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """(job id, version) -> the ids of the live workers serving it (from their `job@version`)."""
    served: dict[tuple[str, str], list[str]] = {}
    for worker in workers:
        for key in worker.get("jobs") or []:
            job_id, _, version = str(key).rpartition("@")
            served.setdefault((job_id, version), []).append(worker["worker_id"])
    return served


def duration(run: dict[str, Any]) -> float | None:
    """Seconds from start to end, or to now while the run is under way."""
    start: datetime | None = run.get("started_at")
    if start is None:
        return None
    end: datetime | None = run.get("completed_at")
    return (end.timestamp() if end else clock.now()) - start.timestamp()


def fingerprint(run: dict[str, Any]) -> tuple[Any, ...]:
    """What, when it changes, changes a runs-table row."""
    return (run["status"], run["started_at"], run["completed_at"], run.get("waiting_for"))
