"""Attempt history: every attempt of a task is kept (when, which worker, its outcome and error),
across retries and `runs retry`; a first-time success writes nothing more than its task row."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from sqlalchemy import text
from support import Harness, lose_executions, unique_id

from engine import IO, Context, RetryPolicy, Task, job


async def _kept_rows(harness: Harness) -> int:
    async with harness.store.begin() as conn:
        return int((await conn.execute(text("SELECT COUNT(*) FROM engine_task_attempts"))).scalar())


def _times_in_order(history: list[dict[str, Any]]) -> None:
    stamps = [
        datetime.fromisoformat(t)
        for a in history
        for t in (a["started_at"], a["ended_at"])
        if t is not None
    ]
    assert stamps == sorted(stamps), history


async def test_a_first_time_success_keeps_no_earlier_attempt(harness: Harness) -> None:
    @job(id=unique_id("once"))
    async def once(payload: Any, io: IO, ctx: Context) -> int:
        async def step(task: Task) -> int:
            return task.attempt

        return await io.run_task("step", step)

    scheduler = await harness.start(once)
    view = await harness.run(once)
    (task,) = view["tasks"]
    assert (task["status"], task["attempts"]) == ("COMPLETED", 1)
    (only,) = task["attempt_history"]
    assert (only["attempt"], only["status"], only["worker"], only["error"]) == (
        1,
        "COMPLETED",
        scheduler.worker_id,
        None,
    )
    assert only["started_at"] == task["started_at"] and only["ended_at"] == task["completed_at"]
    assert await _kept_rows(harness) == 0


async def test_a_retried_task_keeps_each_failed_attempt_with_its_error(harness: Harness) -> None:
    failures = {"left": 2}

    @job(id=unique_id("flaky"))
    async def retrying(payload: Any, io: IO, ctx: Context) -> int:
        async def flaky(task: Task) -> int:
            if failures["left"]:
                failures["left"] -= 1
                raise ConnectionError(f"flaky attempt {task.attempt}")
            return task.attempt

        policy = RetryPolicy(max_attempts=3, min_delay=0.05, max_delay=0.05)
        return await io.run_task("flaky", flaky, retry=policy)

    scheduler = await harness.start(retrying)
    view = await harness.run(retrying)
    assert view["status"] == "COMPLETED" and view["output"] == 3
    (task,) = view["tasks"]
    assert (task["status"], task["attempts"], task["error"]) == ("COMPLETED", 3, None)
    history = task["attempt_history"]
    me = scheduler.worker_id
    assert [(a["attempt"], a["status"], a["worker"]) for a in history] == [
        (1, "ERRORED", me),
        (2, "ERRORED", me),
        (3, "COMPLETED", me),
    ]
    assert [(a["error"]["type"], a["error"]["message"]) for a in history[:2]] == [
        ("ConnectionError", "flaky attempt 1"),
        ("ConnectionError", "flaky attempt 2"),
    ]
    assert history[2]["error"] is None
    assert all(a["started_at"] and a["ended_at"] for a in history)
    _times_in_order(history)
    assert await _kept_rows(harness) == 2


async def test_runs_retry_keeps_the_old_attempts_and_gives_a_fresh_budget(
    harness: Harness,
) -> None:
    seen: list[int] = []

    @job(id=unique_id("retried"))
    async def fragile(payload: Any, io: IO, ctx: Context) -> int:
        async def down_three_times(task: Task) -> int:
            seen.append(task.attempt)
            if task.attempt <= 3:
                raise RuntimeError(f"down {task.attempt}")
            return task.attempt

        policy = RetryPolicy(max_attempts=2, min_delay=0.01, max_delay=0.01)
        return await io.run_task("fragile", down_three_times, retry=policy)

    await harness.start(fragile)
    failed = await harness.run(fragile)
    assert failed["status"] == "FAILED"
    (task,) = failed["tasks"]
    assert (task["status"], task["attempts"]) == ("ERRORED", 2)
    assert [(a["attempt"], a["status"]) for a in task["attempt_history"]] == [
        (1, "ERRORED"),
        (2, "ERRORED"),
    ]

    await harness.engine.retry(failed["id"])
    run = await harness.engine.wait_for(failed["id"], 20)
    assert run["status"] == "COMPLETED" and run["output"] == 4
    # The count goes on (3, 4), and the policy's two attempts count from the retry.
    assert seen == [1, 2, 3, 4]
    (task,) = (await harness.engine.show_run(failed["id"]))["tasks"]
    assert (task["status"], task["attempts"]) == ("COMPLETED", 4)
    history = task["attempt_history"]
    assert [(a["attempt"], a["status"]) for a in history] == [
        (1, "ERRORED"),
        (2, "ERRORED"),
        (3, "ERRORED"),
        (4, "COMPLETED"),
    ]
    assert [a["error"]["message"] for a in history[:3]] == ["down 1", "down 2", "down 3"]
    _times_in_order(history)


async def test_attempts_lost_with_their_executions_are_kept_as_lost(harness: Harness) -> None:
    """Each execution dies mid-step (its lease lapses); past the recovery bound the run fails,
    and every lost attempt is kept, with its worker; `runs retry` then finishes the step."""
    seen: list[int] = []
    healthy = asyncio.Event()

    @job(id=unique_id("losing"))
    async def losing(payload: Any, io: IO, ctx: Context) -> str:
        async def hang(task: Task) -> str:
            seen.append(task.attempt)
            await healthy.wait()
            return "done"

        # record_start: the RUNNING row is written as the step starts (as for paid calls).
        result: str = await io.call("hang", hang, kind="custom", name="hang", record_start=True)
        return result

    scheduler = await harness.start(losing, lease_seconds=1, max_recoveries=2)
    run_id = await harness.engine.trigger(losing.id)
    await lose_executions(scheduler, run_id, seen, times=3)
    failed = await harness.engine.wait_for(run_id, 30)
    assert failed["status"] == "FAILED" and failed["error"]["type"] == "RecoveryLimitError"
    (task,) = (await harness.engine.show_run(run_id))["tasks"]
    assert (task["status"], task["attempts"]) == ("CANCELED", 3)
    me = scheduler.worker_id
    assert [
        (a["attempt"], a["status"], a["worker"], a["ended_at"]) for a in task["attempt_history"]
    ] == [(1, "LOST", me, None), (2, "LOST", me, None), (3, "LOST", me, None)]

    healthy.set()
    await harness.engine.retry(run_id)
    done = await harness.engine.wait_for(run_id, 30)
    assert (done["status"], done["output"]) == ("COMPLETED", "done")
    assert seen == [1, 2, 3, 4]
    (task,) = (await harness.engine.show_run(run_id))["tasks"]
    assert (task["status"], task["attempts"]) == ("COMPLETED", 4)
    assert [(a["attempt"], a["status"]) for a in task["attempt_history"]] == [
        (1, "LOST"),
        (2, "LOST"),
        (3, "LOST"),
        (4, "COMPLETED"),
    ]
