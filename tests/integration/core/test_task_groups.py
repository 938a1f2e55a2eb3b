"""`asyncio.TaskGroup` in a job: waits inside it suspend the run, errors inside it fail it."""

from __future__ import annotations

import asyncio
from typing import Any

from support import Harness, unique_id, until

from engine import IO, Context, DivergenceError, RetryPolicy, Task, clock, job


async def _status(harness: Harness, run_id: str) -> str:
    return str((await harness.engine.get_run(run_id))["status"])


async def test_waits_in_a_task_group_suspend_and_resume_the_run(harness: Harness) -> None:
    calls: list[str] = []

    @job(id=unique_id("taskgroup"))
    async def grouped(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> str:
            calls.append(task.key)
            return task.key.upper()

        async def flaky(task: Task) -> str:
            calls.append(task.key)
            if task.attempt == 1:
                raise RuntimeError("first attempt fails")
            return "FLAKY"

        retry = RetryPolicy(max_attempts=2, min_delay=600, max_delay=600)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(io.run_task("flaky", flaky, retry=retry))  # a retry delay parks
            tg.create_task(io.wait("short", 600))
            tg.create_task(io.wait("long", 3600))
            made = tg.create_task(io.run_task("made", step))
        after = await io.run_task("after", step)
        return [made.result(), after]

    scheduler = await harness.start(grouped)
    run_id = await harness.engine.trigger(grouped.id)
    await until(lambda: sorted(calls) == ["flaky", "made"], "the group's tasks to run")

    for _ in range(1500):  # suspended, not failed: a group of suspensions is a suspension
        status = await _status(harness, run_id)
        if status != "RUNNING":
            break
        await asyncio.sleep(0.02)
    assert status == "WAITING"
    clock.advance(3601)
    scheduler.wake.set()
    run = await harness.engine.wait_for(run_id, 30)
    assert run["status"] == "COMPLETED", run.get("error")
    assert run["output"] == ["MADE", "AFTER"]
    # The completed step did not run again on resume; the flaky one ran its two attempts.
    assert sorted(calls) == ["after", "flaky", "flaky", "made"]
    view = await harness.engine.show_run(run_id)
    rows = {t["key"]: (t["status"], t["attempts"]) for t in view["tasks"]}
    assert rows == {
        "short": ("COMPLETED", 1),
        "long": ("COMPLETED", 1),
        "made": ("COMPLETED", 1),
        "flaky": ("COMPLETED", 2),
        "after": ("COMPLETED", 1),
    }


async def test_a_real_error_in_a_task_group_fails_the_run_with_it(harness: Harness) -> None:
    @job(id=unique_id("taskgroup-error"))
    async def failing(payload: Any, io: IO, ctx: Context) -> None:
        async def broken(task: Task) -> None:
            raise ValueError("broken step")

        async with asyncio.TaskGroup() as tg:
            tg.create_task(io.wait("nap", 3600))
            tg.create_task(io.run_task("broken", broken, retry=RetryPolicy(max_attempts=1)))

    await harness.start(failing)
    view = await harness.run(failing)
    assert view["status"] == "FAILED"
    assert view["error"]["type"] == "ExceptionGroup"
    rows = {t["key"]: t["status"] for t in view["tasks"]}
    assert rows["broken"] == "ERRORED"


async def test_a_divergence_in_a_task_group_stays_fatal(harness: Harness) -> None:
    version = {"code": "old"}

    @job(id=unique_id("taskgroup-diverge"))
    async def diverging(payload: Any, io: IO, ctx: Context) -> None:
        async def fetch(task: Task) -> int:
            return 1

        async with asyncio.TaskGroup() as tg:
            tg.create_task(io.wait("nap", 3600))
            if version["code"] == "old":
                tg.create_task(io.run_task("step", fetch))
            else:
                tg.create_task(io.wait("step", 3600))  # same key, another kind of call

    scheduler = await harness.start(diverging)
    run_id = await harness.engine.trigger(diverging.id)
    for _ in range(1500):
        if await _status(harness, run_id) == "WAITING":
            break
        await asyncio.sleep(0.02)
    version["code"] = "new"
    clock.advance(3601)
    scheduler.wake.set()
    run = await harness.engine.wait_for(run_id, 30)
    assert run["status"] == "FAILED"
    assert run["error"]["type"] == DivergenceError.__name__
