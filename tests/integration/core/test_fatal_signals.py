"""After a fatal signal (a divergence, a cancel) every later `io` call raises it again: a job
that catches it cannot run or record anything more."""

from __future__ import annotations

import asyncio
from typing import Any

from support import Harness, unique_id, until

from engine import IO, Context, DivergenceError, Task, job


async def test_a_job_that_catches_a_divergence_cannot_go_on(harness: Harness) -> None:
    executions: list[int] = []
    side_effects: list[str] = []
    caught: list[str] = []

    @job(id=unique_id("diverge"))
    async def diverging(payload: Any, io: IO, ctx: Context) -> str:
        executions.append(1)

        async def step(task: Task) -> Any:
            return 1

        async def effect(task: Task) -> Any:
            side_effects.append(task.key)
            return 2

        # The first execution records a step named "one"; after the wait the code calls "two".
        name = "one" if len(executions) == 1 else "two"
        try:
            await io.run_task("a", step, name=name)
        except DivergenceError:
            caught.append("a")
        try:
            await io.wait("w", 0.05)  # the first execution parks here; the second diverged
        except DivergenceError:
            caught.append("w")
        io.logger.info("after the divergence")
        try:
            await io.run_task("b", effect)
        except DivergenceError:
            caught.append("b")
        return "went on"

    await harness.start(diverging)
    view = await harness.run(diverging)
    assert view["status"] == "FAILED"
    assert view["error"]["type"] == "DivergenceError"
    assert side_effects == []
    assert caught == ["a", "w", "b"]
    assert [t["key"] for t in view["tasks"]] == ["a", "w"]
    assert await harness.engine.run_logs(view["id"]) == []


async def test_a_job_or_task_that_swallows_a_cancel_cannot_go_on(harness: Harness) -> None:
    reached: list[str] = []
    side_effects: list[str] = []
    outcomes: list[str] = []

    @job(id=unique_id("swallow"))
    async def swallowing(payload: Any, io: IO, ctx: Context) -> None:
        async def stubborn(task: Task) -> Any:
            reached.append(task.key)
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass
            try:
                await io.run_task("inner", effect)
            except BaseException as exc:
                outcomes.append(f"inner: {type(exc).__name__}")
            return 1

        async def effect(task: Task) -> Any:
            side_effects.append(task.key)
            return 2

        try:
            await io.run_task("slow", stubborn)
        except BaseException as exc:
            outcomes.append(f"slow: {type(exc).__name__}")
        io.logger.info("after the cancel")
        try:
            await io.run_task("next", effect)
        except BaseException as exc:
            outcomes.append(f"next: {type(exc).__name__}")
            raise

    scheduler = await harness.start(swallowing, lease_seconds=30)
    run_id = await harness.engine.trigger(swallowing.id)
    await until(lambda: reached, "the step to start")
    await harness.engine.cancel(run_id)
    await until(lambda: len(outcomes) == 3 and not scheduler.active, "the job to end")
    assert outcomes == ["inner: LeaseLost", "slow: LeaseLost", "next: LeaseLost"]
    assert side_effects == []
    view = await harness.engine.show_run(run_id)
    assert view["status"] == "CANCELED"
    assert view["tasks"] == []
    assert await harness.engine.run_logs(run_id) == []
