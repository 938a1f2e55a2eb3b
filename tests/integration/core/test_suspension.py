"""Waits unload the run; parallel branches; suspension is not an error; divergence."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from support import Harness, unique_id

from engine import IO, Context, DivergenceError, Task, job


async def test_parallel_steps_replay_by_key(harness: Harness) -> None:
    calls: list[str] = []

    @job(id=unique_id("gather"))
    async def gathered(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> Any:
            calls.append(task.key)
            await asyncio.sleep(0.01)
            return task.key.upper()

        a, b, _ = await asyncio.gather(
            io.run_task("a", step), io.run_task("b", step), io.wait("c", 0.05)
        )
        d = await io.run_task("d", step)
        return [a, b, d]

    await harness.start(gathered)
    view = await harness.run(gathered)
    assert view["output"] == ["A", "B", "D"]
    assert sorted(calls) == ["a", "b", "d"]


async def test_unloads_only_after_every_branch_finished_or_parked(harness: Harness) -> None:
    calls: list[str] = []

    @job(id=unique_id("branches"))
    async def branches(payload: Any, io: IO, ctx: Context) -> Any:
        async def slow(task: Task) -> Any:
            await asyncio.sleep(0.2)  # still running when the other branch parks
            calls.append(task.key)
            return 1

        async def then_more() -> Any:
            await io.run_task("slow", slow)
            return await io.run_task("after-slow", slow)

        await asyncio.gather(io.wait("quick", 0.01), then_more())
        return calls

    await harness.start(branches)
    view = await harness.run(branches)
    assert view["status"] == "COMPLETED"
    # Neither slow step was cut short and re-run: each ran exactly once.
    assert calls == ["slow", "after-slow"]


async def test_a_run_waiting_on_several_waits_resumes_when_the_last_is_due(
    harness: Harness,
) -> None:
    @job(id=unique_id("multiwait"))
    async def multi(payload: Any, io: IO, ctx: Context) -> Any:
        start = time.monotonic()
        await asyncio.gather(io.wait("short", 0.05), io.wait("long", 0.3), io.wait("mid", 0.1))
        return time.monotonic() - start

    await harness.start(multi)
    started = time.monotonic()
    view = await harness.run(multi)
    assert view["status"] == "COMPLETED"
    assert time.monotonic() - started >= 0.3
    assert {t["key"]: t["status"] for t in view["tasks"]} == {
        "short": "COMPLETED",
        "long": "COMPLETED",
        "mid": "COMPLETED",
    }


async def test_suspension_passes_through_except_exception(harness: Harness) -> None:
    swallowed: list[str] = []

    @job(id=unique_id("tryexcept"))
    async def careless(payload: Any, io: IO, ctx: Context) -> str:
        try:
            await io.wait("nap", 0.05)
        except Exception as exc:
            swallowed.append(repr(exc))
        return "done"

    await harness.start(careless)
    view = await harness.run(careless)
    assert view["status"] == "COMPLETED" and swallowed == []


async def test_a_waiting_run_holds_no_coroutine(harness: Harness) -> None:
    @job(id=unique_id("holds"))
    async def sleeper(payload: Any, io: IO, ctx: Context) -> None:
        await io.wait("long", 3600)

    scheduler = await harness.start(sleeper)
    run_id = await harness.engine.trigger(sleeper.id)
    for _ in range(200):
        if (await harness.engine.get_run(run_id))["status"] == "WAITING":
            break
        await asyncio.sleep(0.02)
    # The execution unwinds once its suspension is written: wait for that, not for a set time.
    for _ in range(1000):
        if not scheduler.active:
            break
        await asyncio.sleep(0.01)
    assert (await harness.engine.get_run(run_id))["status"] == "WAITING"
    assert scheduler.active == {}
    names = {t.get_name() for t in asyncio.all_tasks()}
    assert not any(run_id in name for name in names)


async def test_divergence_fails_the_run_and_names_the_key(harness: Harness) -> None:
    version = {"code": "old"}

    @job(id=unique_id("diverge"))
    async def diverging(payload: Any, io: IO, ctx: Context) -> str:
        async def fetch(task: Task) -> Any:
            return 1

        if version["code"] == "old":
            await io.run_task("step", fetch)
            # The code changes before the next execution, whenever that comes: no race with
            # the test reading the run's status.
            version["code"] = "new"
        else:
            try:
                await io.wait("step", 0.01)  # same key, another kind of call
            except DivergenceError:
                pass  # swallowing it does not save the run
        await io.wait("pause", 0.1)
        return "finished"

    await harness.start(diverging)
    run_id = await harness.engine.trigger(diverging.id)
    run = await harness.engine.wait_for(run_id, 30)
    assert run["status"] == "FAILED"
    assert run["error"]["type"] == "DivergenceError"
    message = run["error"]["message"]
    assert "'step'" in message and "task 'fetch'" in message and "wait 'wait'" in message


async def test_a_worker_leaves_runs_of_versions_it_does_not_have(harness: Harness) -> None:
    job_id = unique_id("versioned")

    @job(id=job_id, version="1")
    async def v1(payload: Any, io: IO, ctx: Context) -> str:
        return "v1"

    await harness.engine.upgrade()
    old_run = await harness.engine.trigger(job_id)

    @job(id=job_id, version="2")
    async def v2(payload: Any, io: IO, ctx: Context) -> str:
        return "v2"

    await harness.start(v2)
    new_run = await harness.engine.trigger(job_id)
    assert (await harness.engine.wait_for(new_run, 10))["output"] == "v2"
    # One more run through the scheduler (not a sleep): every claim since old_run was queued
    # passed it over, the older run, which a claim would have taken first.
    later = await harness.engine.trigger(job_id)
    assert (await harness.engine.wait_for(later, 10))["output"] == "v2"
    assert (await harness.engine.get_run(old_run))["status"] == "QUEUED"
    # A worker that still has version 1 finishes it.
    await harness.start(v1)
    assert (await harness.engine.wait_for(old_run, 10))["output"] == "v1"
