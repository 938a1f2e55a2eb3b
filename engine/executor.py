"""Executes one claimed run: replays the job from the top and records how this execution ended.

An execution ends in one of four ways: the job returned (COMPLETED), raised (FAILED), every
branch parked on a wait (the run is unloaded: WAITING), or the lease was lost (nothing is
written; the new owner carries on).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import clock, schedules, serialization, streams, tracing
from .context import Context
from .exceptions import (
    DatabaseError,
    LeaseLost,
    NotSerializableError,
    Suspend,
    WriteFailed,
    WriteRefusedError,
)
from .io import IO
from .jobs import Job
from .records import ClaimedRun
from .replay import Replay
from .store import Store

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger("engine.executor")

# Loop turns to let ready callbacks run before deciding that every branch is parked.
_SETTLE_TURNS = 8


@dataclass
class Outcome:
    status: str  # COMPLETED, FAILED, WAITING, or LOST
    wake_at: float | None = None
    error: BaseException | None = None  # why a FAILED run failed


async def execute(
    store: Store,
    job: Job,
    claimed: ClaimedRun,
    worker_id: str,
    replays: dict[str, Replay] | None = None,
    tracer: Tracer | None = None,
) -> Outcome:
    """Replays `claimed` to its next persisted end; `replays` lets the worker watch it;
    `tracer` (engine.tracing) gives the execution and its task attempts spans."""
    ctx = Context(
        claimed.id,
        job.id,
        job.version,
        max(claimed.attempt, 1),
        worker_id,
        schedules.tick_of(claimed.idempotency_key),
    )
    span = tracing.start_run(
        tracer,
        run_id=claimed.id,
        job_id=job.id,
        job_version=job.version,
        attempt=ctx.attempt,
        worker_id=worker_id,
    )
    if span is None:
        return await _execute(store, job, claimed, ctx, replays, None, None)
    outcome = Outcome("LOST")
    try:
        outcome = await _execute(store, job, claimed, ctx, replays, tracer, span)
        return outcome
    finally:
        tracing.end_run(span, outcome.status, outcome.error)


async def _execute(
    store: Store,
    job: Job,
    claimed: ClaimedRun,
    ctx: Context,
    replays: dict[str, Replay] | None,
    tracer: Tracer | None,
    span: Span | None,
) -> Outcome:
    replay = await Replay.load(store, claimed.id, claimed.epoch, ctx.worker_id)
    if replays is not None:
        replays[claimed.id] = replay
    io = IO(replay, claimed.id, tracer)
    io._attach(job.integrations)

    async def run_job() -> Any:
        # In the job's own asyncio context: its log lines name the run, its spans nest.
        with tracing.running(claimed.id, span):
            return await job.fn(job.load_payload(claimed.payload), io, ctx)

    job_task = asyncio.ensure_future(run_job())
    replay.job_task = job_task
    try:
        await _supervise(job_task, replay)
    except asyncio.CancelledError:
        job_task.cancel()
        raise
    # Under shield: a cancel (a stopping worker) must not cut the recording of the run's end
    # in half; it finishes in the background and the canceller carries on.
    outcome = await asyncio.shield(_conclude(store, job_task, replay, claimed))
    if replay.streams is not None and outcome.status in ("COMPLETED", "FAILED"):
        # The run's streams are closed: their followers learn it now rather than at their
        # next poll (engine.streams).
        streams.announce_local(store.url, claimed.id)
        await store.announce_stream_end(claimed.id)
    return outcome


async def _supervise(job_task: asyncio.Future[Any], replay: Replay) -> None:
    """Returns when the job has finished, or has been unloaded because every branch parked."""
    while not job_task.done():
        changed = asyncio.ensure_future(replay.changed.wait())
        await asyncio.wait({job_task, changed}, return_when=asyncio.FIRST_COMPLETED)
        changed.cancel()
        replay.changed.clear()
        if job_task.done() or replay.in_flight:
            continue
        if replay.draining:
            replay.unload()
            await asyncio.wait({job_task})
            return
        if not replay.parked:
            continue
        stamp = replay.progress
        for _ in range(_SETTLE_TURNS):
            await asyncio.sleep(0)
        if replay.progress == stamp and not replay.in_flight and replay.parked:
            replay.unload()
            await asyncio.wait({job_task})


async def _conclude(
    store: Store, job_task: asyncio.Future[Any], replay: Replay, claimed: ClaimedRun
) -> Outcome:
    # The job may have ended (raised past a gather) while other branches still run: let their
    # steps commit, start no new ones, and release what is parked, before recording the end.
    if not replay.unloading:
        replay.unload()
    while replay.in_flight > 0:
        replay.changed.clear()
        await replay.changed.wait()
    exc = job_task.exception() if not job_task.cancelled() else asyncio.CancelledError()
    if isinstance(exc, BaseExceptionGroup):
        exc = _ungroup(exc)
    if replay.fatal is not None and not isinstance(exc, LeaseLost):
        exc = replay.fatal
    if not await replay.settle_background():
        return Outcome("LOST")
    if isinstance(exc, WriteFailed):
        log.warning("run %s stopped: %s; it resumes once its lease lapses", claimed.id, exc)
        return Outcome("LOST")
    if isinstance(exc, LeaseLost) or replay.lost:
        return Outcome("LOST")
    logs = replay.take_logs()
    if isinstance(exc, Suspend):
        # A run unloaded because the worker is stopping is due again at once, for any worker.
        wake_at = clock.now() if replay.draining else replay.wake_at
        try:
            ok = await store.suspend_run(claimed.id, claimed.epoch, wake_at, logs)
            return Outcome("WAITING", wake_at) if ok else Outcome("LOST")
        except DatabaseError as refused:
            if refused.transient:
                raise
            # Only the log lines ride along: one of them is what the database refuses.
            exc = WriteRefusedError(
                f"the database refused to record the run's log lines: {refused.message}"
            )
            logs = []
    if exc is None:
        try:
            output, output_type = serialization.encode(job_task.result(), "the job's return value")
        except NotSerializableError as error:
            exc = error
        else:
            try:
                ok = await store.finish_run(
                    claimed.id,
                    claimed.epoch,
                    "COMPLETED",
                    output=output,
                    output_type=output_type,
                    logs=logs,
                    **_links(claimed, replay),
                )
                return Outcome("COMPLETED") if ok else Outcome("LOST")
            except DatabaseError as refused:
                if refused.transient:
                    raise
                exc = WriteRefusedError(
                    f"the database refused to record the job's return value: {refused.message}"
                )
                logs = []  # they may be what was refused
    log.info("run %s failed: %s: %s", claimed.id, type(exc).__name__, exc)
    return await _finish_failed(store, claimed, exc, logs, _links(claimed, replay))


def _ungroup(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """What a task group's exceptions mean for the run. A group made only of suspensions (and
    the cancellations a task group sends the siblings of the branch that raised) suspends the
    run, as `gather` does; a lost lease or a stopped write in it is that signal; otherwise the
    group without its suspensions is the run's error, as if no branch had been parked."""
    for signal in (LeaseLost, WriteFailed):
        found = group.subgroup(signal)
        if found is not None:
            return _first_leaf(found)
    parked = group.subgroup(Suspend)
    _, rest = group.split((Suspend, asyncio.CancelledError))
    if rest is None:
        return _first_leaf(parked) if parked is not None else asyncio.CancelledError()
    return rest


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _links(claimed: ClaimedRun, replay: Replay) -> dict[str, Any]:
    """How the run's end reaches the runs around it: its parent, whose task it settles, and
    whether it started children (those still going are canceled with it)."""
    cascade = any(row.kind == "invoke" for row in replay.recorded.values())
    return {"parent_run_id": claimed.parent_run_id, "cascade": cascade}


async def _finish_failed(
    store: Store,
    claimed: ClaimedRun,
    exc: BaseException,
    logs: list[Any],
    links: dict[str, Any],
) -> Outcome:
    """Records the run FAILED; if the database refuses that error for good, a plainer one, so
    the run ends once instead of being executed again every lease period."""
    errors = [
        serialization.encode_error(exc),
        {"type": "WriteRefusedError", "message": "the database refused this run's error"},
    ]
    for n, error in enumerate(errors):
        try:
            ok = await store.finish_run(
                claimed.id,
                claimed.epoch,
                "FAILED",
                error=error,
                logs=logs if n == 0 else (),
                **links,
            )
            break
        except DatabaseError as refused:
            if refused.transient or n == len(errors) - 1:
                raise
            log.warning("run %s: the database refused its error: %s", claimed.id, refused)
    return Outcome("FAILED", error=exc) if ok else Outcome("LOST")
