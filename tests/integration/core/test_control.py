"""Trigger idempotency, cancel, retry, and background polls."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flagserver import FlagServer
from pydantic import BaseModel
from support import Harness, unique_id

from engine import (
    IO,
    Context,
    Engine,
    EngineError,
    InvalidRunStateError,
    PayloadValidationError,
    PollTimeoutError,
    Task,
    UnknownJobError,
    job,
)


async def _until(engine: Engine, run_id: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    for _ in range(int(timeout / 0.01)):
        run = await engine.get_run(run_id)
        if run["status"] == status:
            return run
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} never reached {status}: {run['status']}")


async def test_one_idempotency_key_gives_one_run_even_when_racing(harness: Harness) -> None:
    @job(id=unique_id("idem"))
    async def idem(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    await harness.engine.upgrade()
    ids = await asyncio.gather(
        *(harness.engine.trigger(idem.id, {"n": i}, idempotency_key="order-42") for i in range(8))
    )
    assert len(set(ids)) == 1
    runs = await harness.engine.list_runs(idem.id)
    assert len(runs) == 1
    other = await harness.engine.trigger(idem.id, {"n": 1}, idempotency_key="order-43")
    assert other != ids[0]


async def test_payload_model_validates_and_reaches_the_job_as_a_model(harness: Harness) -> None:
    class Order(BaseModel):
        id: int
        item: str

    @job(id=unique_id("typed"), payload=Order)
    async def typed(payload: Order, io: IO, ctx: Context) -> Any:
        return {"type": type(payload).__name__, "item": payload.item}

    await harness.start(typed)
    with pytest.raises(PayloadValidationError, match="id: Input should be a valid integer"):
        await harness.engine.trigger(typed.id, {"id": "x", "item": "pen"})
    assert await harness.engine.list_runs(typed.id) == []
    view = await harness.run(typed, {"id": 1, "item": "pen"})
    assert view["output"] == {"type": "Order", "item": "pen"}


async def test_unknown_job_is_refused(harness: Harness) -> None:
    await harness.engine.upgrade()
    with pytest.raises(UnknownJobError, match="no job 'nope' is registered"):
        await harness.engine.trigger("nope")


async def test_cancel_a_waiting_run(harness: Harness) -> None:
    @job(id=unique_id("cancelwait"))
    async def sleeper(payload: Any, io: IO, ctx: Context) -> None:
        await io.wait("long", 3600)

    await harness.start(sleeper)
    run_id = await harness.engine.trigger(sleeper.id)
    await _until(harness.engine, run_id, "WAITING")
    assert await harness.engine.cancel(run_id) == "WAITING"
    view = await harness.engine.show_run(run_id)
    assert view["status"] == "CANCELED"
    assert view["tasks"][0]["status"] == "CANCELED"
    with pytest.raises(InvalidRunStateError, match="already CANCELED"):
        await harness.engine.cancel(run_id)


async def test_cancel_a_queued_run(harness: Harness) -> None:
    @job(id=unique_id("cancelq"))
    async def never(payload: Any, io: IO, ctx: Context) -> int:
        return 1

    await harness.engine.upgrade()
    run_id = await harness.engine.trigger(never.id)
    await harness.engine.cancel(run_id)
    await harness.start(never)
    # A run queued after it completes (not a sleep): the scheduler's claims, which take the
    # oldest run first, passed the canceled one over.
    later = await harness.engine.trigger(never.id)
    assert (await harness.engine.wait_for(later, 10))["status"] == "COMPLETED"
    assert (await harness.engine.get_run(run_id))["status"] == "CANCELED"


async def test_cancel_a_running_run_interrupts_the_step_in_flight(harness: Harness) -> None:
    reached: list[str] = []
    interrupted: list[str] = []

    @job(id=unique_id("cancelrun"))
    async def busy(payload: Any, io: IO, ctx: Context) -> None:
        async def slow(task: Task) -> Any:
            reached.append(task.key)
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                interrupted.append(task.key)
                raise
            return 1

        async def later(task: Task) -> None:
            reached.append(task.key)

        await io.run_task("slow", slow)
        await io.run_task("later", later)

    scheduler = await harness.start(busy, lease_seconds=30)
    run_id = await harness.engine.trigger(busy.id)
    for _ in range(500):
        if reached:
            break
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await harness.engine.cancel(run_id)
    for _ in range(300):
        if interrupted and not scheduler.active:
            break
        await asyncio.sleep(0.01)
    assert interrupted == ["slow"], "the step in flight was not interrupted"
    assert time.monotonic() - started < 2.0  # not at the next heartbeat (10 s) or later
    view = await harness.engine.show_run(run_id)
    assert view["status"] == "CANCELED"
    assert reached == ["slow"]
    assert view["tasks"] == []  # nothing was recorded after the cancel


async def test_retry_a_failed_run_reruns_only_what_failed(harness: Harness) -> None:
    calls: list[str] = []
    broken = {"yes": True}

    @job(id=unique_id("retryrun"))
    async def fragile(payload: Any, io: IO, ctx: Context) -> Any:
        async def good(task: Task) -> Any:
            calls.append(task.key)
            return 1

        async def bad(task: Task) -> Any:
            calls.append(task.key)
            if broken["yes"]:
                raise RuntimeError("downstream is down")
            return 2

        return [await io.run_task("good", good), await io.run_task("bad", bad)]

    await harness.start(fragile)
    view = await harness.run(fragile)
    assert view["status"] == "FAILED"
    with pytest.raises(InvalidRunStateError):
        await harness.engine.retry(await harness.engine.trigger(fragile.id))
    broken["yes"] = False
    await harness.engine.retry(view["id"])
    run = await harness.engine.wait_for(view["id"], 10)
    assert run["status"] == "COMPLETED" and run["output"] == [1, 2]
    # Two runs ran "good" (the failed one, once, and the one triggered above); the retried
    # run did not run it again.
    assert calls.count("good") == 2


async def test_retry_does_not_repeat_completed_tasks(harness: Harness) -> None:
    calls: list[str] = []
    broken = {"yes": True}

    @job(id=unique_id("retry2"))
    async def fragile(payload: Any, io: IO, ctx: Context) -> str:
        async def good(task: Task) -> None:
            calls.append("good")

        async def bad(task: Task) -> None:
            calls.append("bad")
            if broken["yes"]:
                raise RuntimeError("down")

        await io.run_task("good", good)
        await io.run_task("bad", bad)
        return "ok"

    await harness.start(fragile)
    view = await harness.run(fragile)
    assert view["status"] == "FAILED"
    broken["yes"] = False
    await harness.engine.retry(view["id"])
    run = await harness.engine.wait_for(view["id"], 10)
    assert run["status"] == "COMPLETED" and run["error"] is None
    assert calls == ["good", "bad", "bad"]


@pytest.fixture
def flag() -> Iterator[FlagServer]:
    with FlagServer({"state": "done"}) as server:
        yield server


async def test_background_poll_returns_the_body_once_the_url_answers(
    harness: Harness, flag: FlagServer
) -> None:
    @job(id=unique_id("poll"))
    async def polling(payload: Any, io: IO, ctx: Context) -> Any:
        return await io.background_poll("status", flag.url, interval=0.05, timeout=30)

    await harness.start(polling)
    started = time.monotonic()
    run_id = await harness.engine.trigger(polling.id)
    await _until(harness.engine, run_id, "WAITING")
    for _ in range(1000):  # two polls while waiting, however slow the machine
        if flag.hits >= 2:
            break
        await asyncio.sleep(0.01)
    polls_while_waiting = flag.hits
    waited = time.monotonic() - started
    assert polls_while_waiting >= 2
    flag.ready.set()
    run = await harness.engine.wait_for(run_id, 10)
    assert run["status"] == "COMPLETED"
    assert run["output"]["state"] == "done"
    # Never faster than the schedule: at most one poll per interval (plus slack).
    assert polls_while_waiting <= waited / 0.05 + 2


async def test_background_poll_times_out_with_a_clear_error(
    harness: Harness, flag: FlagServer
) -> None:
    @job(id=unique_id("polltimeout"))
    async def polling(payload: Any, io: IO, ctx: Context) -> str | None:
        try:
            await io.background_poll("never", flag.url, interval=0.05, timeout=0.3)
        except PollTimeoutError as exc:
            return f"gave up: {exc}"
        return None

    await harness.start(polling)
    view = await harness.run(polling)
    assert view["output"].startswith("gave up: http poll gave up after 0.3s")
    assert view["tasks"][0]["status"] == "ERRORED"


async def test_background_poll_refuses_secret_headers(harness: Harness) -> None:
    @job(id=unique_id("pollsecret"))
    async def polling(payload: Any, io: IO, ctx: Context) -> None:
        await io.background_poll(
            "p", "http://127.0.0.1:9/x", headers={"Authorization": "Bearer sk-123"}
        )

    await harness.start(polling)
    view = await harness.run(polling)
    assert view["status"] == "FAILED"
    assert "looks secret" in view["error"]["message"]
    assert "sk-123" not in json.dumps(view)


def test_bad_retry_policy_is_refused_with_the_bounds() -> None:
    from engine import RetryPolicy

    with pytest.raises(EngineError, match="use 1 to 100"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(EngineError, match="min_delay <= max_delay"):
        RetryPolicy(min_delay=10, max_delay=1)


async def test_retrying_a_run_whose_poll_timed_out_polls_again_afresh(
    harness: Harness, flag: FlagServer
) -> None:
    @job(id=unique_id("pollretry"))
    async def polling(payload: Any, io: IO, ctx: Context) -> Any:
        return await io.background_poll("later", flag.url, interval=0.05, timeout=0.3)

    await harness.start(polling)
    view = await harness.run(polling)
    assert view["status"] == "FAILED"
    assert view["error"]["type"] == "PollTimeoutError"
    flag.ready.set()
    await harness.engine.retry(view["id"])
    run = await harness.engine.wait_for(view["id"], 10)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"]["state"] == "done"


async def test_a_retried_run_keeps_the_due_time_of_a_wait_the_failure_cut_off(
    harness: Harness,
) -> None:
    broken = {"yes": True}

    @job(id=unique_id("retrywait"))
    async def waits_and_fails(payload: Any, io: IO, ctx: Context) -> str:
        async def fragile(task: Task) -> None:
            if broken["yes"]:
                raise RuntimeError("down")

        await asyncio.gather(io.wait("cool-off", 1.0), io.run_task("fragile", fragile))
        return "done"

    await harness.start(waits_and_fails)
    started = time.monotonic()
    view = await harness.run(waits_and_fails)
    assert view["status"] == "FAILED"
    broken["yes"] = False
    await harness.engine.retry(view["id"])
    run = await harness.engine.wait_for(view["id"], 10)
    assert run["status"] == "COMPLETED"
    assert time.monotonic() - started >= 1.0  # the wait was not cut short by the retry
