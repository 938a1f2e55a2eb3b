"""`timeout=` holds even when the task swallows its cancellation."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

from support import Harness, unique_id

from engine import IO, Context, Task, TaskTimeoutError, job

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_a_task_that_swallows_its_cancellation_still_times_out(harness: Harness) -> None:
    stop = asyncio.Event()
    seen: list[str] = []
    side_effects: list[str] = []

    async def swallow_and_return(task: Task) -> Any:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            return "escaped"
        return None

    async def swallow_and_raise(task: Task) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise ValueError("not a timeout") from None

    async def swallow_and_keep_going(task: Task) -> Any:
        seen.append(request_id.get())
        while not stop.is_set():
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                try:
                    assert task_io is not None  # set by the job before this task runs
                    await task_io.run_task("after", effect)  # must not record anything
                except TaskTimeoutError:
                    seen.append("io refused")
        return "escaped"

    async def effect(task: Task) -> None:
        side_effects.append(task.key)

    task_io: IO | None = None

    @job(id=unique_id("timeout"))
    async def timed(payload: Any, io: IO, ctx: Context) -> Any:
        nonlocal task_io
        task_io = io
        request_id.set("r-1")
        results = {}
        for key, fn in [
            ("return", swallow_and_return),
            ("raise", swallow_and_raise),
            ("keep-going", swallow_and_keep_going),
        ]:
            try:
                results[key] = await io.run_task(key, fn, timeout=0.2)
            except TaskTimeoutError as exc:
                results[key] = type(exc).__name__
        return results

    await harness.start(timed)
    try:
        view = await harness.run(timed, timeout=60)
    finally:
        stop.set()
    assert view["status"] == "COMPLETED", view["error"]
    assert view["output"] == {
        "return": "TaskTimeoutError",
        "raise": "TaskTimeoutError",
        "keep-going": "TaskTimeoutError",
    }
    tasks = {t["key"]: t for t in view["tasks"]}
    assert set(tasks) == {"return", "raise", "keep-going"}
    for task in tasks.values():
        assert task["status"] == "ERRORED"
        assert task["error"]["type"] == "TaskTimeoutError"
        assert task["children"] == []
    assert seen[0] == "r-1"  # the attempt runs in the caller's context
    assert "io refused" in seen
    assert side_effects == []


async def test_canceling_the_run_interrupts_an_attempt_under_a_timeout(harness: Harness) -> None:
    reached: list[str] = []
    interrupted: list[str] = []

    @job(id=unique_id("timeoutcancel"))
    async def slow_job(payload: Any, io: IO, ctx: Context) -> None:
        async def slow(task: Task) -> None:
            reached.append(task.key)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                interrupted.append(task.key)
                raise

        await io.run_task("slow", slow, timeout=30)

    scheduler = await harness.start(slow_job, lease_seconds=30)
    run_id = await harness.engine.trigger(slow_job.id)
    for _ in range(3000):
        if reached:
            break
        await asyncio.sleep(0.01)
    await harness.engine.cancel(run_id)
    for _ in range(3000):
        if interrupted and not scheduler.active:
            break
        await asyncio.sleep(0.01)
    assert interrupted == ["slow"]
    view = await harness.engine.show_run(run_id)
    assert view["status"] == "CANCELED"
    assert view["tasks"] == []
