"""The scheduler loop inside `engine run`: claims runs, performs polls, keeps leases alive.

It waits on "new work, the next due time, or stop", whichever comes first: a trigger or a
finished poll wakes it (LISTEN/NOTIFY on PostgreSQL, in-process events everywhere), and the next
due time (a wait, a poll, an expired lease) comes from the database, so it never spins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from . import clock, codec, pollers, schedules, secrets, serialization, tracing
from .exceptions import (
    DatabaseError,
    EngineError,
    NotSerializableError,
    PollTimeoutError,
    RunTimeoutError,
)
from .executor import execute
from .jobs import Job
from .outage import Outage, backoff
from .records import DuePoll
from .recovery import DEFAULT_MAX_RECOVERIES, check_max_recoveries
from .store import Store

log = logging.getLogger("engine.scheduler")

# At most this long between two looks at the schedules and deadlines (seconds).
TRIGGER_CHECK = 1.0

MAX_LEASE_SECONDS = 3600.0
MAX_CONCURRENCY = 10_000


class Scheduler:
    def __init__(
        self,
        store: Store,
        jobs: Sequence[Job],
        *,
        concurrency: int = 20,
        lease_seconds: float = 30.0,
        idle_poll: float | None = None,
        poll_concurrency: int = 50,
        worker_id: str | None = None,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
        tracer_provider: Any = None,
    ) -> None:
        secrets.install_log_filter()  # the engine loggers created since import, too
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise EngineError(f"--concurrency {concurrency}: use 1 to {MAX_CONCURRENCY}")
        if not 1 <= lease_seconds <= MAX_LEASE_SECONDS:
            raise EngineError(f"--lease-seconds {lease_seconds}: use 1 to {MAX_LEASE_SECONDS:.0f}")
        self.max_recoveries = check_max_recoveries(max_recoveries)
        self.store = store
        self.jobs = {job.key: job for job in jobs}
        # Jobs with a concurrency limit are claimed by the limited claim; without any, the claim
        # is the one plain statement (engine.store.claim_runs).
        self.limited = sorted({job.id for job in jobs if job.concurrency is not None})
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        # A safety net: new work is announced by the store's wake-up side task (see
        # `Store.watch`); due times come from the database.
        self.idle_poll = idle_poll or store.idle_poll
        self.poll_slots = poll_concurrency
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.active: dict[str, asyncio.Task[Any]] = {}
        self.polling: set[asyncio.Task[Any]] = set()
        self.wake = asyncio.Event()
        self.stopping = asyncio.Event()
        self._replays: dict[str, Any] = {}
        self._saturated = False
        self._claimed_upto = 0.0
        # Set when another party wrote to the database (NOTIFY, data_version, this process's
        # Engine): only then can a run we are executing have been canceled.
        self._news = False
        # The claim loop is the one that reports an outage; side tasks retry quietly.
        self.outage = Outage(log)
        # Spans go to `tracer_provider`, else to the global one (engine.tracing).
        self.tracer = tracing.tracer(tracer_provider)
        # Schedules and deadlines are looked at when one falls due (the sleep wakes for it) and
        # at least every TRIGGER_CHECK seconds (a schedule registered or resumed elsewhere),
        # not on every claim round.
        self._triggers_at = 0.0
        self._plan = schedules.planner(self.jobs) if self._scheduled() else None

    # -- the loop ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Works until `stop()`; then lets in-flight runs reach their next persisted point."""
        self.store.add_local_listener(self._hear)
        await self._announce(sweep=True)
        side = [
            asyncio.create_task(self._heartbeats(), name="engine-heartbeat"),
            self.store.watch(self._hear),  # NOTIFY on PostgreSQL, data_version on SQLite
        ]
        try:
            while not self.stopping.is_set():
                self._check_side_tasks(side)
                try:
                    busy = await self.tick()
                    self.outage.recovered()
                    if not busy:
                        await self._sleep()
                except DatabaseError as exc:
                    # Never fatal: runs in flight keep their leases as long as the heartbeat
                    # gets through, and claiming resumes as soon as the database answers.
                    self.outage.failed(exc)
                    await self.outage.pause(self.stopping)
        finally:
            await self._drain()
            for task in side:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            self.store.remove_local_listener(self._hear)
            await self._retire()

    def _hear(self, *_: Any) -> None:
        """News from outside this scheduler: new work, a finished poll, a cancel."""
        self._news = True
        self.wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()

    async def tick(self) -> bool:
        """One round of claiming; True when there may be more to take right away."""
        self.wake.clear()
        await self._fire_triggers()
        await self._interrupt_canceled()
        free = self.concurrency - len(self.active)
        # With limits, a due run may stay unclaimed (its slot is taken): remember what this
        # claim saw, so that sleeping does not treat it as due work again and again.
        self._claimed_upto = clock.now() if self.limited and free > 0 else 0.0
        claimed = (
            await self.store.claim_runs(
                self.worker_id,
                free,
                self.lease_seconds,
                list(self.jobs),
                self.max_recoveries,
                limited=self.limited,
            )
            if free > 0
            else []
        )
        for run in claimed:
            self.active[run.id] = asyncio.create_task(self._execute(run), name=f"run-{run.id}")
        poll_free = self.poll_slots - len(self.polling)
        polls = (
            await self.store.claim_polls(
                sorted(pollers.registered()), poll_free, self.lease_seconds
            )
            if poll_free > 0
            else []
        )
        for poll in polls:
            task = asyncio.create_task(self._poll(poll))
            self.polling.add(task)
            task.add_done_callback(self._poll_done)
        # With every slot taken, due work must wait for a slot (whose release wakes us).
        self._saturated = free - len(claimed) <= 0 or poll_free - len(polls) <= 0
        return (free > 0 and len(claimed) == free) or (poll_free > 0 and len(polls) == poll_free)

    def _scheduled(self) -> bool:
        return any(job.schedules for job in self.jobs.values())

    async def _fire_triggers(self) -> None:
        """Fires due schedule ticks and cancels runs past their deadline."""
        now = clock.now()
        if now < self._triggers_at:
            return
        self._triggers_at = now + TRIGGER_CHECK
        if self._plan is not None:
            scheduled = [key for key, job in self.jobs.items() if job.schedules]
            await self.store.fire_schedules(scheduled, self._plan)
        if await self.store.cancel_expired(deadline_error):
            self._news = True  # one of them may be running here: interrupt it

    async def _sleep(self) -> None:
        timeout = self.idle_poll
        if self.outage.ongoing:  # look again soon, to see whether the database stays up
            timeout = min(timeout, self.outage.settle)
        due = None
        if not self._saturated:
            due = await self.store.next_due(
                list(self.jobs), sorted(pollers.registered()), self._claimed_upto
            )
        if due is not None:
            timeout = min(timeout, max(due - clock.now(), 0.002))
            # Whatever falls due (a tick, a deadline) is looked at on waking.
            self._triggers_at = min(self._triggers_at, due)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.wake.wait()

    # -- runs -------------------------------------------------------------------------------------

    async def _execute(self, run: Any) -> None:
        job = self.jobs[f"{run.job_id}@{run.job_version}"]
        try:
            outcome = await execute(
                self.store, job, run, self.worker_id, self._replays, self.tracer
            )
            log.debug("run %s: %s", run.id, outcome.status)
        except asyncio.CancelledError:
            raise
        except DatabaseError as exc:
            # The run stays RUNNING; its lease expires and it is picked up again. One line, not
            # a traceback per run: the outage itself is reported by the claim loop.
            log.warning("run %s: not recorded (%s); it resumes once its lease lapses", run.id, exc)
        except Exception:
            # The run stays RUNNING; its lease expires and it is picked up again.
            log.exception("run %s: the execution could not record its outcome", run.id)
        finally:
            self.active.pop(run.id, None)
            self._replays.pop(run.id, None)
            self.wake.set()

    async def _interrupt_canceled(self) -> None:
        """Stops executions whose run was canceled (a cancel wakes us: NOTIFY, data_version)."""
        if not (self._news and self._replays):
            return
        self._news = False
        try:
            canceled = await self.store.canceled_among(list(self._replays))
        except DatabaseError:
            self._news = True  # check again once the database answers; the caller backs off
            raise
        for run_id in canceled:
            replay = self._replays.get(run_id)
            if replay is not None:
                log.info("run %s was canceled: interrupting it", run_id)
                replay.abort()

    async def _heartbeats(self) -> None:
        failures = 0
        while True:
            # During an outage, retry sooner than the regular beat: the leases are running out.
            beat = self.lease_seconds / 3
            await asyncio.sleep(min(beat, backoff(failures - 1)) if failures else beat)
            # Judge only the executions this heartbeat was sent for: one that started while it
            # was in flight is not in its answer, and is not lost.
            sent = dict(self._replays)
            try:
                held = await self.store.heartbeat(self.worker_id, self.lease_seconds, list(sent))
            except EngineError as exc:
                # Quiet: the claim loop reports the outage once.
                failures += 1
                log.debug("heartbeat failed: %s", exc)
                continue
            failures = 0
            for run_id, replay in sent.items():
                if held.get(run_id) != replay.epoch:
                    # Canceled, or reclaimed after we stalled: nothing it does can be recorded.
                    replay.abort()
            await self._announce()

    async def _announce(self, *, sweep: bool = False) -> None:
        """Keeps this worker's row in `engine_workers` live (version routing, `jobs list`)."""
        try:
            await self.store.upsert_worker(
                self.worker_id,
                socket.gethostname(),
                os.getpid(),
                list(self.jobs),
                self.lease_seconds,
                sweep=sweep,
            )
        except EngineError as exc:
            # A database error is quiet: the claim loop reports an outage once, and the next
            # beat records this worker again.
            level = logging.DEBUG if isinstance(exc, DatabaseError) else logging.WARNING
            log.log(level, "recording this worker as live failed: %s", exc)

    async def _retire(self) -> None:
        try:
            await asyncio.shield(self.store.remove_worker(self.worker_id))
        except EngineError as exc:
            log.warning("removing this worker's row failed: %s", exc)

    def _check_side_tasks(self, side: list[asyncio.Task[Any]]) -> None:
        # The side tasks retry database errors themselves; one that still died has a bug.
        for task in side:
            if task.done() and not task.cancelled() and task.exception():
                raise EngineError(f"worker side task {task.get_name()} died: {task.exception()}")

    async def _drain(self) -> None:
        for replay in list(self._replays.values()):
            replay.drain()
        if self.active:
            await asyncio.gather(*self.active.values(), return_exceptions=True)
        if self.polling:
            await asyncio.gather(*self.polling, return_exceptions=True)

    # -- polls ------------------------------------------------------------------------------------

    def _poll_done(self, task: asyncio.Task[Any]) -> None:
        self.polling.discard(task)
        self.wake.set()

    async def _poll(self, poll: DuePoll) -> None:
        schedule = pollers.PollSchedule.from_state(poll.poll_state)
        polls = int(poll.poll_state.get("polls", 0))
        deadline = poll.started_at + schedule.timeout
        try:
            result = await pollers.get(poll.poller)(poll.params)
        except Exception as exc:  # a failing poll is retried on schedule, until the deadline
            log.warning("poll %s (%s) failed: %s", poll.task_id, poll.poller, exc)
            result = pollers.PollResult(done=False)
        try:
            polls += 1
            state = schedule.state(polls)
            if result.done:
                output, error = _poll_outcome(poll, result)
                await self.store.finish_poll(
                    poll, output=output, error=error, poll_state=state, usage=result.usage
                )
                self._traced_wait(poll, result.usage, error)
                return
            now = clock.now()
            if now >= deadline:
                timeout = PollTimeoutError(
                    f"{poll.poller} poll gave up after {schedule.timeout:g}s ({polls} polls)"
                )
                error = serialization.encode_error(timeout)
                await self.store.finish_poll(poll, error=error, poll_state=state)
                self._traced_wait(poll, None, error)
                return
            next_poll = min(now + schedule.delay(polls), deadline)
            await self.store.reschedule_poll(poll.task_id, next_poll, state)
        except EngineError as exc:
            log.warning("poll %s could not be recorded: %s", poll.task_id, exc)

    def _traced_wait(
        self, poll: DuePoll, usage: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> None:
        tracing.record_wait(
            self.tracer,
            run_id=poll.run_id,
            task_id=poll.task_id,
            poller=poll.poller,
            started_at=poll.started_at,
            usage=usage,
            error=error,
        )


def _poll_outcome(poll: DuePoll, result: pollers.PollResult) -> tuple[Any, dict[str, Any] | None]:
    """What a finished poll records: a value the codec refuses ends the poll ERRORED with the
    reason (once), instead of a write the database would refuse on every try."""
    where = f"{poll.poller} poll of task {poll.task_id}"
    try:
        if result.error:
            return None, codec.check(result.error, f"{where} error")
        return codec.check(result.value, f"{where} value"), None
    except NotSerializableError as exc:
        return None, serialization.encode_error(exc)


def deadline_error(deadline: datetime) -> dict[str, Any]:
    """What a run canceled at its deadline records as its error."""
    when = deadline.astimezone(UTC).isoformat(timespec="seconds")
    return serialization.encode_error(
        RunTimeoutError(
            f"deadline {when} passed before the run finished: canceled (a longer timeout: "
            "@job(timeout=...) or engine trigger --timeout)"
        )
    )
