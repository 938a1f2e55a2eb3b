"""`Engine`: trigger runs and inspect them from Python (the CLI is built on it)."""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import (
    clock,
    codec,
    durations,
    events,
    flow,
    launch,
    limits,
    usage,
    versions,
    views,
    waiting,
)
from .events import SentEvent, SentSignal
from .exceptions import EngineError, PayloadValidationError
from .prices import PriceTable
from .schema import FINAL_RUN_STATUSES, RUN_STATUSES
from .store import DEFAULT_DATABASE_URL, StartOnEvent, Store

if TYPE_CHECKING:
    # engine.streams brings the replay machinery (and pydantic): only a reader needs it.
    from .streams import StreamChunk


def resolve_database_url(explicit: str | None = None) -> str:
    """The URL to use: the one given, else $ENGINE_DATABASE_URL, else ./engine.db."""
    return explicit or os.environ.get("ENGINE_DATABASE_URL") or DEFAULT_DATABASE_URL


class Engine:
    """A handle on one engine database: `await Engine(url).trigger("job-id", payload)`."""

    def __init__(self, database_url: str | None = None, *, pool_size: int = 10) -> None:
        self.store = Store(resolve_database_url(database_url), pool_size=pool_size)
        self._upgraded = False

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.store.close()

    async def upgrade(self) -> None:
        """Brings the schema to head (idempotent)."""
        if not self._upgraded:
            # Alembic is imported only when a schema may need changing: CLI reads stay fast.
            from . import migrate

            await migrate.upgrade(self.store)
            self._upgraded = True

    async def trigger(
        self,
        job_id: str,
        payload: Any = None,
        *,
        idempotency_key: str | None = None,
        version: str | None = None,
        priority: int | None = None,
        delay: timedelta | float | None = None,
        at: datetime | None = None,
        timeout: timedelta | float | None = None,
    ) -> str:
        """Queues a run of `job_id` and returns its id; one idempotency key gives one run.

        A payload that is omitted (or None) is `{}`, validated like any other: a job whose
        payload type has required fields refuses it here, and no run is created.
        `version` pins the job version; without it the run goes to the version this process
        defines, else the highest one a live worker serves, else the highest registered one.
        `priority` (-100 to 100) overrides the job's; see docs/flow-control.md.
        `delay` (a timedelta or seconds) or `at` (an aware datetime) keeps the run QUEUED and
        unclaimed until then; `timeout` (overriding the job's `timeout=`) cancels the run if it
        is unfinished that long after it was due to start. See docs/triggers.md.
        """
        # Inputs are checked before anything is written (docs/concepts.md, "What can be recorded").
        if idempotency_key is not None:
            limits.check_text(idempotency_key, "idempotency_key", limits.MAX_IDEMPOTENCY_KEY_LENGTH)
        not_before = _not_before(delay, at)
        run_timeout = durations.seconds(timeout, "timeout")
        new = await launch.prepare(self.store, job_id, payload, version=version, priority=priority)
        if run_timeout is None:
            run_timeout = new.timeout
        # Only now is anything written: a trigger that fails leaves no file and no tables behind.
        if new.local is not None:
            await self.upgrade()
            await self.store.register_jobs([new.local])
        run_id, _ = await self.store.create_run(
            job_id,
            new.version,
            new.payload,
            idempotency_key,
            priority=new.priority,
            concurrency=new.concurrency,
            not_before=not_before,
            timeout=run_timeout,
        )
        return run_id

    async def jobs(self) -> list[dict[str, Any]]:
        """Every registered job: its versions (natural order), when each was registered, the
        live workers serving each, and `default_version`, where a trigger without a version
        goes from a process that does not define the job (`engine jobs list --json`)."""
        rows, workers = await self.store.job_versions()
        by_job: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_job.setdefault(row["job_id"], []).append(row)
        listed = []
        for job_id in sorted(by_job):
            served = versions.live_versions(job_id, workers)
            registered = sorted((r["version"] for r in by_job[job_id]), key=versions.version_key)
            when = {r["version"]: r["registered_at"] for r in by_job[job_id]}
            schemas = {r["version"]: r["payload_schema"] for r in by_job[job_id]}
            listed.append(
                {
                    "job_id": job_id,
                    "default_version": versions.default_version(registered, served),
                    "versions": [
                        {
                            "version": v,
                            "registered_at": views.iso(when[v]),
                            "payload_schema": schemas[v],
                            "live_workers": len(served.get(v, [])),
                            "worker_ids": sorted(served.get(v, [])),
                        }
                        for v in registered
                    ],
                }
            )
        return listed

    async def workers(self) -> list[dict[str, Any]]:
        """The live workers (`engine workers list --json`): id, host, pid, the `job@version`s
        they serve, when they started, their last heartbeat and when they stop counting as
        live without another one."""
        _, workers = await self.store.job_versions()
        return [
            {
                "worker_id": w["worker_id"],
                "host": w["host"],
                "pid": w["pid"],
                "jobs": list(w["jobs"] or []),
                "started_at": views.iso(w["started_at"]),
                "last_seen_at": views.iso(w["last_seen_at"]),
                "expires_at": views.iso(w["expires_at"]),
            }
            for w in workers
        ]

    # -- events and signals (docs/triggers.md) ---------------------------------------------------

    async def send_event(
        self, name: str, payload: Any = None, *, id: str | None = None
    ) -> SentEvent:
        """Stores an event and delivers it at once: every run waiting for it
        (`io.wait_for_event` with a matching `match`) is woken, and every job registered with
        `@job(on_event=name)` gets one run. `id` deduplicates: sending an id again stores and
        delivers nothing (`SentEvent.created` is False). Without one the event gets a fresh id,
        fixed before the first try: a try retried after a lost answer delivers nothing twice
        and answers what the committed try did. An omitted payload is `{}`."""
        name = events.check_name(name, "event name")
        event_id = events.check_event_id(id) if id is not None else uuid.uuid4().hex
        stored = codec.check({} if payload is None else payload, f"the payload of event {name!r}")
        await self.upgrade()
        return await self.store.send_event(
            event_id,
            name,
            stored,
            functools.partial(_runs_on_event, name, stored),
            events.send_token(),
        )

    async def events(self, name: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Sent events (of one name), newest first: id, name, payload, sent_at, and how many
        waiting runs each woke and runs each started when it was sent."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise EngineError(f"limit {limit!r}: give a whole number of events, 1 or more")
        rows = await self.store.list_events(name, limit)
        return [{**row, "sent_at": views.iso(row["sent_at"])} for row in rows]

    async def signal(
        self, run_id: str, name: str, payload: Any = None, *, id: str | None = None
    ) -> SentSignal:
        """Sends signal `name` to one run: it settles the run's wait for it
        (`io.wait_for_signal`), or is kept until the run waits for it (`SentSignal.woke` says
        which). `id` deduplicates per run: a second signal with an id the run already has sends
        nothing (`created` is False). A run that does not exist or has finished refuses it with
        one error."""
        name = events.check_name(name, "signal name")
        dedupe_id = events.check_event_id(id, "signal id") if id is not None else uuid.uuid4().hex
        stored = codec.check({} if payload is None else payload, f"the payload of signal {name!r}")
        return await self.store.send_signal(run_id, name, stored, dedupe_id, events.send_token())

    async def schedules(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The registered schedules (`engine schedules list --json`): job, expression,
        timezone, paused, missed-tick policy, the next fire times (the first is the stored
        one; a paused schedule has none) and the last tick fired with its run."""
        from . import schedules

        listed = []
        for row in await self.store.list_schedules(job_id):
            upcoming: list[str | None] = []
            if not row["paused"]:
                at = row["next_fire_at"].timestamp()
                for _ in range(3):
                    upcoming.append(schedules.iso(at))
                    at = schedules.next_after(row["expression"], row["timezone"], at)
            listed.append(
                {
                    "job_id": row["job_id"],
                    "version": row["job_version"],
                    "expression": row["expression"],
                    "timezone": row["timezone"],
                    "missed": row["missed"],
                    "paused": bool(row["paused"]),
                    "next_fire_times": upcoming,
                    "last_tick_at": views.iso(row["last_tick_at"]),
                    "last_run_id": row["last_run_id"],
                }
            )
        return listed

    async def pause_schedule(self, job_id: str, expression: str | None = None) -> int:
        """Pauses the job's schedules (the one with `expression`); returns how many changed."""
        return await self._set_paused(job_id, expression, True)

    async def resume_schedule(self, job_id: str, expression: str | None = None) -> int:
        """Resumes them from their next tick: ticks missed while paused are not made up."""
        return await self._set_paused(job_id, expression, False)

    async def _set_paused(self, job_id: str, expression: str | None, paused: bool) -> int:
        from . import schedules

        known = await self.store.list_schedules(job_id)
        wanted = None if expression is None else " ".join(expression.split())
        if not any(wanted in (None, r["expression"]) for r in known):
            have = ", ".join(repr(r["expression"]) for r in known) or "none"
            raise EngineError(
                f"job {job_id!r} has no schedule"
                + (f" {expression!r}" if expression is not None else "")
                + f" (its schedules: {have}): `engine schedules list` shows them"
            )
        changed = await self.store.set_schedules_paused(
            job_id, wanted, paused, schedules.next_after
        )
        return len(changed)

    async def get_run(self, run_id: str) -> dict[str, Any]:
        return await self.store.get_run(run_id)

    async def list_runs(
        self,
        job_id: str | None = None,
        status: str | None = None,
        limit: int = 100,
        *,
        version: str | None = None,
        parent: str | None = None,
    ) -> list[dict[str, Any]]:
        """Runs (of one job version, with `version`; the child runs of `parent`), newest
        first, each shaped like `show_run` without `tasks`."""
        # The dialects disagree on LIMIT -1 (SQLite: no limit; PostgreSQL: an error).
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise EngineError(f"limit {limit!r}: give a whole number of runs, 1 or more")
        if status is not None and status.upper() not in RUN_STATUSES:
            raise EngineError(
                f"status {status!r} is not a run status: use one of {', '.join(RUN_STATUSES)}"
            )
        if parent is not None:
            await self.store.get_run(parent)  # an unknown parent: one clear error, not "no runs"
        rows = await self.store.list_runs(job_id, status and status.upper(), limit, version, parent)
        return await self._with_waits(rows)

    async def _with_waits(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run views, each with `waiting_for` (engine.waiting): null unless QUEUED or WAITING."""
        pending = [r["id"] for r in rows if r["status"] in ("QUEUED", "WAITING")]
        tasks, running = await self.store.waits(pending) if pending else ({}, {})
        now = clock.utcnow()
        listed = []
        for row in rows:
            view = views.run_view(row)
            view["waiting_for"] = waiting.waiting_for(row, tasks.get(row["id"], []), running, now)
            listed.append(view)
        return listed

    async def cancel(self, run_id: str) -> str:
        return await self.store.cancel_run(run_id)

    async def retry(self, run_id: str) -> None:
        await self.store.retry_run(run_id)

    async def wait_for(self, run_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Polls until the run is COMPLETED, FAILED or CANCELED (for scripts and tests)."""
        deadline = clock.now() + timeout
        while True:
            run = await self.store.get_run(run_id)
            if run["status"] in FINAL_RUN_STATUSES:
                return run
            if clock.now() > deadline:
                raise EngineError(f"run {run_id} is still {run['status']} after {timeout}s")
            await asyncio.sleep(0.02)

    async def show_run(self, run_id: str) -> dict[str, Any]:
        """The run and its task tree, as `engine runs show --json` prints it."""
        run = await self.store.get_run(run_id)
        (view,) = await self._with_waits([run])
        # Parent and children both ways (docs/triggers.md, "Child runs").
        view["parent_task"], child_runs = await self.store.run_links(run)
        view["child_runs"] = [views.child_view(child) for child in child_runs]
        tasks, attempts = await self.store.get_tasks(run_id), await self.store.get_attempts(run_id)
        view["tasks"] = views.task_tree(tasks, attempts)
        # Tokens and cost per task (subtasks included) and per run, its children's included.
        descendants = await self.store.descendant_usage(run_id) if child_runs else []
        usage.attach(view, await self.store.get_usage(run_id), PriceTable.load(), descendants)
        return view

    async def usage_report(
        self, since: float | None = None, job_id: str | None = None
    ) -> dict[str, Any]:
        """Calls, tokens and cost by day (UTC), job and model (`engine usage --json`)."""
        prices = PriceTable.load()  # a bad $ENGINE_PRICES is refused before the query
        return usage.report(await self.store.usage_report(since, job_id), prices)

    def read_stream(
        self, run_id: str, stream: str, *, after: int | None = None
    ) -> AsyncIterator[StreamChunk]:
        """The chunks the run writes to `stream` (`io.stream.write`), in order, as they are
        committed, ending once the run has ended and every chunk was read. Each has `.seq`:
        pass the last one seen as `after=` to resume there after a reconnect."""
        from . import streams

        return streams.read_stream(self.store, run_id, stream, after)

    async def list_streams(self, run_id: str) -> list[dict[str, Any]]:
        """The run's streams: `{"stream", "chunks", "last_seq", "last_at"}` each."""
        await self.store.get_run(run_id)
        return [
            {**row, "last_at": views.iso(row["last_at"])}
            for row in await self.store.streams_of_run(run_id)
        ]

    async def run_logs(self, run_id: str) -> list[dict[str, Any]]:
        return await self.store.get_logs(run_id)


def _runs_on_event(
    name: str, payload: Any, rows: list[dict[str, Any]], workers: list[dict[str, Any]]
) -> list[StartOnEvent]:
    """The run each job registered with `on_event=name` (`rows`) gets, at the version a trigger
    from a process without its code would choose, its payload checked against that version's
    schema first: a refusal refuses the whole event, before anything is written."""
    from .jobs import check_against_schema

    by_job: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_job.setdefault(row["job_id"], {})[row["version"]] = row
    starts: list[StartOnEvent] = []
    for job_id, registered in sorted(by_job.items()):
        version = versions.default_version(registered, versions.live_versions(job_id, workers))
        assert version is not None
        row = registered[version]
        try:
            check_against_schema(job_id, payload, row["payload_schema"])
        except PayloadValidationError as exc:
            raise PayloadValidationError(
                f"event {name!r} starts job {job_id!r} (on_event), which refuses its "
                f"payload: {exc.message}; nothing was sent"
            ) from None
        spec = row["concurrency"]
        key = flow.key_of(spec, job_id, payload, None)
        limit = None if key is None else (key, int(spec["limit"]))
        starts.append((job_id, version, int(row["priority"] or 0), limit, row.get("timeout")))
    return starts


def _not_before(delay: timedelta | float | None, at: datetime | None) -> float | None:
    """When a delayed run may start (epoch seconds), or None to start now."""
    if delay is not None and at is not None:
        raise EngineError("give delay= or at=, not both")
    if at is not None:
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise EngineError(
                f"at={at!r}: give a timezone-aware datetime, e.g. "
                "datetime(2026, 12, 1, 9, tzinfo=UTC)"
            )
        return at.timestamp()
    seconds = durations.seconds(delay, "delay")
    return None if seconds is None else clock.now() + seconds
