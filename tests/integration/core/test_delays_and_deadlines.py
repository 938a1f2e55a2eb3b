"""Delayed runs (`trigger(delay=/at=)`) and run deadlines (`@job(timeout=)`, `trigger(timeout=)`).

Time is moved with engine.clock; "not early" is shown against a run triggered after the delayed
one that completes first, never by waiting a while."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support import Harness, unique_id, until

from engine import IO, Context, EngineError, Task, clock, job
from engine.scheduler import Scheduler

pytestmark = pytest.mark.timeout(120)


async def _status(harness: Harness, run_id: str, status: str) -> dict[str, Any]:
    seen: list[dict[str, Any]] = []

    async def poll() -> None:
        while True:
            run = await harness.engine.get_run(run_id)
            if run["status"] == status:
                seen.append(run)
                return
            await asyncio.sleep(0.02)

    await asyncio.wait_for(poll(), 30)
    return seen[0]


def _advance(seconds: float, *schedulers: Scheduler) -> None:
    clock.advance(seconds)
    for s in schedulers:
        s.wake.set()


async def test_a_delayed_run_waits_for_its_time_then_runs(harness: Harness) -> None:
    @job(id=unique_id("later"))
    async def later(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    worker = await harness.start(later)
    delayed = await harness.engine.trigger(later.id, {"n": 1}, delay=timedelta(minutes=10))
    at = datetime.fromtimestamp(clock.now() + 1200, UTC)
    pinned = await harness.engine.trigger(later.id, {"n": 2}, at=at)
    now = await harness.engine.trigger(later.id, {"n": 3})
    await _status(harness, now, "COMPLETED")
    # Triggered after them and already done: the delayed ones were not claimed.
    view = await harness.engine.show_run(delayed)
    assert view["status"] == "QUEUED", view
    assert view["waiting_for"]["reason"] == "delay"
    assert view["waiting_for"]["summary"].startswith("delayed until ")
    until_time = datetime.fromisoformat(view["delayed_until"]).timestamp()
    assert abs(until_time - (clock.now() + 600)) < 60
    pinned_view = (await harness.engine.list_runs(later.id, status="QUEUED"))[0]
    assert pinned_view["id"] == pinned
    assert pinned_view["delayed_until"] == at.isoformat(timespec="microseconds")

    _advance(601, worker)
    done = await _status(harness, delayed, "COMPLETED")
    assert done["started_at"].timestamp() >= until_time
    assert (await harness.engine.get_run(pinned))["status"] == "QUEUED"
    _advance(600, worker)
    await _status(harness, pinned, "COMPLETED")
    assert (await harness.engine.show_run(pinned))["delayed_until"] is None


async def test_delay_and_at_are_checked_before_anything_is_written(harness: Harness) -> None:
    @job(id=unique_id("checked"))
    async def checked(payload: Any, io: IO, ctx: Context) -> Any:
        return None

    engine = harness.engine
    soon = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(EngineError, match="give delay= or at=, not both"):
        await engine.trigger(checked.id, delay=10, at=soon)
    with pytest.raises(EngineError, match="timezone-aware datetime"):
        await engine.trigger(checked.id, at=soon.replace(tzinfo=None))
    with pytest.raises(EngineError, match="delay=-5: give a duration above 0"):
        await engine.trigger(checked.id, delay=-5)
    with pytest.raises(EngineError, match="timeout='2h': give a timedelta or a number"):
        await engine.trigger(checked.id, timeout="2h")  # type: ignore[arg-type]
    await engine.upgrade()
    assert await engine.list_runs(checked.id) == []


async def test_a_deadline_cancels_a_waiting_run_with_the_error_recorded(harness: Harness) -> None:
    @job(id=unique_id("sleepy"), timeout=timedelta(hours=2))
    async def sleepy(payload: Any, io: IO, ctx: Context) -> Any:
        await io.wait("nap", 86400)
        return "rested"

    worker = await harness.start(sleepy)
    run_id = await harness.engine.trigger(sleepy.id)
    created = (await harness.engine.get_run(run_id))["created_at"]
    view = await harness.engine.show_run(run_id)
    deadline = datetime.fromisoformat(view["deadline_at"])
    assert deadline == created + timedelta(hours=2)
    await _status(harness, run_id, "WAITING")
    _advance(7201, worker)
    run = await _status(harness, run_id, "CANCELED")
    assert run["error"]["type"] == "RunTimeoutError"
    assert deadline.isoformat(timespec="seconds") in run["error"]["message"]
    tasks = await harness.engine.show_run(run_id)
    assert [(t["key"], t["status"]) for t in tasks["tasks"]] == [("nap", "CANCELED")]


async def test_a_deadline_interrupts_a_running_run_and_fences_its_execution(
    harness: Harness,
) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    @job(id=unique_id("stuck"))
    async def stuck(payload: Any, io: IO, ctx: Context) -> Any:
        async def hold(task: Task) -> str:
            entered.set()
            await release.wait()
            finished.append("hold")
            return "held"

        await io.run_task("hold", hold)
        return "done"

    worker = await harness.start(stuck, lease_seconds=600)
    run_id = await harness.engine.trigger(stuck.id, timeout=30)
    await asyncio.wait_for(entered.wait(), 30)
    _advance(31, worker)
    run = await _status(harness, run_id, "CANCELED")
    assert run["error"]["type"] == "RunTimeoutError"
    # Interrupted like a cancel: the execution is gone from the worker.
    await until(lambda: run_id not in worker.active, "the execution to be interrupted")
    release.set()
    # Whatever the step does now cannot be recorded: its run moved to another lease epoch.
    view = await harness.engine.show_run(run_id)
    assert (view["status"], view["output"]) == ("CANCELED", None)
    assert [t["status"] for t in view["tasks"]] in ([], ["CANCELED"])


async def test_a_deadline_cancels_a_queued_run_no_worker_serves(harness: Harness) -> None:
    @job(id=unique_id("served"))
    async def served(payload: Any, io: IO, ctx: Context) -> Any:
        return None

    @job(id=unique_id("unserved"))
    async def unserved(payload: Any, io: IO, ctx: Context) -> Any:
        return None

    worker = await harness.start(served)
    run_id = await harness.engine.trigger(unserved.id, delay=60, timeout=timedelta(minutes=5))
    view = await harness.engine.show_run(run_id)
    # The deadline counts from when the run was due to start: its delay's end.
    assert datetime.fromisoformat(view["deadline_at"]) == datetime.fromisoformat(
        view["delayed_until"]
    ) + timedelta(minutes=5)
    _advance(361, worker)
    run = await _status(harness, run_id, "CANCELED")
    assert run["error"]["type"] == "RunTimeoutError"
    assert run["started_at"] is None


async def test_a_failed_run_keeps_its_outcome_past_its_deadline_and_retry_lifts_it(
    harness: Harness,
) -> None:
    tries: list[int] = []

    @job(id=unique_id("fails-once"), timeout=60)
    async def fails_once(payload: Any, io: IO, ctx: Context) -> Any:
        tries.append(ctx.attempt)
        if len(tries) == 1:
            raise RuntimeError("first try fails")
        return "second try"

    worker = await harness.start(fails_once)
    run_id = await harness.engine.trigger(fails_once.id)
    await _status(harness, run_id, "FAILED")
    _advance(61, worker)
    await until(lambda: worker._triggers_at > clock.now(), "the deadline sweep after the move")
    run = await harness.engine.get_run(run_id)
    assert (run["status"], run["error"]["type"]) == ("FAILED", "RuntimeError")
    await harness.engine.retry(run_id)
    assert (await _status(harness, run_id, "COMPLETED"))["output"] == "second try"
    assert (await harness.engine.show_run(run_id))["deadline_at"] is None


async def test_a_run_an_event_starts_gets_its_jobs_deadline(harness: Harness) -> None:
    name = unique_id("order.created")

    @job(id=unique_id("on-event"), on_event=name, timeout=timedelta(minutes=10))
    async def on_event(payload: Any, io: IO, ctx: Context) -> Any:
        await io.wait("nap", 86400)

    await harness.start(on_event)
    sent = await harness.engine.send_event(name, {"order": 1})
    (run_id,) = sent.started
    view = await harness.engine.show_run(run_id)
    created = datetime.fromisoformat(view["created_at"])
    assert datetime.fromisoformat(view["deadline_at"]) == created + timedelta(minutes=10)
