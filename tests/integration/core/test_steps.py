"""io.run_task: record once, replay forever; subtasks, keys, values, retries, timeouts."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from pydantic import BaseModel
from support import Harness, unique_id

from engine import (
    IO,
    Context,
    DuplicateKeyError,
    NotSerializableError,
    RetryPolicy,
    Task,
    TaskTimeoutError,
    clock,
    job,
)


class Point(BaseModel):
    x: int
    y: int


async def test_completed_tasks_replay_without_running_again(harness: Harness) -> None:
    calls: list[str] = []
    executions: list[int] = []

    @job(id=unique_id("replay"))
    async def replay_job(payload: Any, io: IO, ctx: Context) -> Any:
        executions.append(1)

        async def step(task: Task) -> Any:
            calls.append(task.key)
            return {"key": task.key, "attempt": task.attempt}

        first = await io.run_task("first", step, params={"n": 1})
        await io.wait("pause", 0.05)
        second = await io.run_task("second", step)
        return [first, second]

    await harness.start(replay_job)
    view = await harness.run(replay_job)
    assert view["status"] == "COMPLETED"
    assert calls == ["first", "second"]
    assert len(executions) == 2  # unloaded at the wait, replayed from the top after it
    first = view["tasks"][0]
    assert first["params"] == {"n": 1} and first["output"] == {"key": "first", "attempt": 1}


async def test_subtasks_nest_under_their_parent(harness: Harness) -> None:
    @job(id=unique_id("nested"))
    async def nested(payload: Any, io: IO, ctx: Context) -> Any:
        async def child(task: Task) -> Any:
            return task.path

        async def parent(task: Task) -> Any:
            a = await io.run_task("child", child)
            b = await io.run_task("other", child)
            return [a, b]

        return await io.run_task("parent", parent)

    await harness.start(nested)
    view = await harness.run(nested)
    assert view["output"] == [["parent", "child"], ["parent", "other"]]
    (parent,) = view["tasks"]
    assert [c["key"] for c in parent["children"]] == ["child", "other"]
    assert all(c["status"] == "COMPLETED" for c in parent["children"])


async def test_a_key_used_twice_among_siblings_is_a_clear_error(harness: Harness) -> None:
    @job(id=unique_id("dup"))
    async def dup(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> Any:
            return 1

        await io.run_task("same", step)
        try:
            await io.run_task("same", step)
        except DuplicateKeyError as exc:
            return str(exc)
        return "no error"

    await harness.start(dup)
    view = await harness.run(dup)
    assert "key 'same' is used twice" in view["output"]
    assert len(view["tasks"]) == 1


async def test_same_key_under_different_parents_is_fine(harness: Harness) -> None:
    @job(id=unique_id("scoped"))
    async def scoped(payload: Any, io: IO, ctx: Context) -> Any:
        async def leaf(task: Task) -> Any:
            return 1

        async def branch(task: Task) -> Any:
            return await io.run_task("leaf", leaf)

        return [await io.run_task("a", branch), await io.run_task("b", branch)]

    await harness.start(scoped)
    assert (await harness.run(scoped))["output"] == [1, 1]


async def test_unstorable_output_raises_at_the_call_site(harness: Harness) -> None:
    @job(id=unique_id("unstorable"))
    async def unstorable(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> Any:
            return object()

        try:
            await io.run_task("bad", step)
        except NotSerializableError as exc:
            return str(exc)
        return "stored?"

    await harness.start(unstorable)
    view = await harness.run(unstorable)
    assert "io.run_task('bad') output" in view["output"]
    assert "object cannot be stored" in view["output"]


async def test_unstorable_params_are_refused_before_anything_runs(harness: Harness) -> None:
    ran: list[int] = []

    @job(id=unique_id("badparams"))
    async def bad_params(payload: Any, io: IO, ctx: Context) -> None:
        async def step(task: Task) -> None:
            ran.append(1)

        await io.run_task("p", step, params={"when": object()})

    await harness.start(bad_params)
    view = await harness.run(bad_params)
    assert view["status"] == "FAILED"
    assert view["error"]["type"] == "NotSerializableError"
    assert ran == [] and view["tasks"] == []


async def test_pydantic_models_come_back_as_the_same_type(harness: Harness) -> None:
    seen: list[tuple[str, bool]] = []

    @job(id=unique_id("models"))
    async def models(payload: Any, io: IO, ctx: Context) -> Any:
        async def untyped(task: Task) -> Any:
            return Point(x=1, y=2)

        async def typed(task: Task) -> list[Point]:
            return [Point(x=3, y=4)]

        a = await io.run_task("untyped", untyped)
        b = await io.run_task("typed", typed)
        seen.append(("untyped", type(a) is Point))
        seen.append(("typed", type(b[0]) is Point))
        await io.wait("w", 0.02)
        return {"a": a.x, "b": b[0].y}

    await harness.start(models)
    view = await harness.run(models)
    assert view["output"] == {"a": 1, "b": 4}
    # Both the first execution and the replay after the wait saw real models.
    assert seen == [("untyped", True), ("typed", True)] * 2


async def test_retries_are_persisted_waits_and_recorded(harness: Harness) -> None:
    failures = {"left": 2}
    executions: list[int] = []

    @job(id=unique_id("retry"))
    async def retrying(payload: Any, io: IO, ctx: Context) -> Any:
        executions.append(1)

        async def flaky(task: Task) -> Any:
            if failures["left"]:
                failures["left"] -= 1
                raise ConnectionError(f"flaky attempt {task.attempt}")
            return task.attempt

        # An hour: the run is surely unloaded, whatever the machine's speed; the test moves the
        # clock past it (a short delay could pass before the retry is recorded: no unloading).
        policy = RetryPolicy(max_attempts=3, min_delay=3600, max_delay=3600)
        return await io.run_task("flaky", flaky, retry=policy)

    scheduler = await harness.start(retrying)
    run_id = await harness.engine.trigger(retrying.id)
    for attempt in (1, 2):
        deadline = time.monotonic() + 30
        while not (
            len(executions) == attempt
            and run_id not in scheduler.active
            and (await harness.engine.get_run(run_id))["status"] == "WAITING"
        ):
            assert time.monotonic() < deadline, f"retry {attempt} did not unload the run"
            await asyncio.sleep(0.01)
        clock.advance(3600)
        scheduler.wake.set()
    await harness.engine.wait_for(run_id, 30)
    view = await harness.engine.show_run(run_id)
    assert view["status"] == "COMPLETED"
    assert view["output"] == 3
    assert view["tasks"][0]["attempts"] == 3
    # Each retry delay unloaded the run: one execution per attempt.
    assert len(executions) == 3


async def test_exhausted_retries_reach_the_job_with_the_original_error(harness: Harness) -> None:
    @job(id=unique_id("exhaust"))
    async def exhaust(payload: Any, io: IO, ctx: Context) -> str | None:
        async def always(task: Task) -> None:
            raise ValueError(f"nope {task.attempt}")

        try:
            await io.run_task("always", always, retry=RetryPolicy(max_attempts=2, min_delay=0.01))
        except ValueError as exc:
            return f"caught {exc}"
        return None

    await harness.start(exhaust)
    view = await harness.run(exhaust)
    assert view["output"] == "caught nope 2"
    task = view["tasks"][0]
    assert task["status"] == "ERRORED" and task["attempts"] == 2
    assert task["error"]["type"] == "ValueError" and task["error"]["message"] == "nope 2"


async def test_a_recorded_failure_replays_as_the_same_exception(harness: Harness) -> None:
    caught: list[str] = []

    @job(id=unique_id("replayerr"))
    async def replay_error(payload: Any, io: IO, ctx: Context) -> Any:
        async def boom(task: Task) -> None:
            raise KeyError("missing")

        try:
            await io.run_task("boom", boom)
        except KeyError as exc:
            caught.append(type(exc).__name__)
        await io.wait("w", 0.02)
        return caught

    await harness.start(replay_error)
    view = await harness.run(replay_error)
    assert view["status"] == "COMPLETED"
    assert caught == ["KeyError", "KeyError"]


async def test_a_failing_job_records_its_error(harness: Harness) -> None:
    @job(id=unique_id("fails"))
    async def fails(payload: Any, io: IO, ctx: Context) -> None:
        raise RuntimeError("the job broke")

    await harness.start(fails)
    view = await harness.run(fails)
    assert view["status"] == "FAILED"
    assert view["error"]["type"] == "RuntimeError"
    assert view["error"]["message"] == "the job broke"
    assert "the job broke" in view["error"]["traceback"]
    assert view["completed_at"] is not None


async def test_attempt_timeout(harness: Harness) -> None:
    @job(id=unique_id("timeout"))
    async def slow(payload: Any, io: IO, ctx: Context) -> Any:
        async def sleepy(task: Task) -> None:
            await asyncio.sleep(5)

        try:
            await io.run_task("sleepy", sleepy, timeout=0.05)
        except TaskTimeoutError as exc:
            return str(exc)

    await harness.start(slow)
    view = await harness.run(slow)
    assert "ran longer than its timeout of 0.05s" in view["output"]
    assert view["tasks"][0]["status"] == "ERRORED"


async def test_logger_lines_are_recorded_once(harness: Harness) -> None:
    @job(id=unique_id("logs"))
    async def logs(payload: Any, io: IO, ctx: Context) -> None:
        io.logger.info("starting", n=1)
        await io.wait("w", 0.02)
        io.logger.warn("after the wait")
        return None

    await harness.start(logs)
    view = await harness.run(logs)
    lines = await harness.engine.run_logs(view["id"])
    assert [(line["level"], line["message"]) for line in lines] == [
        ("INFO", "starting"),
        ("WARNING", "after the wait"),
    ]
    assert lines[0]["fields"] == {"n": 1}


async def test_job_return_value_must_be_storable(harness: Harness) -> None:
    @job(id=unique_id("badreturn"))
    async def bad_return(payload: Any, io: IO, ctx: Context) -> Any:
        return {1, 2}

    await harness.start(bad_return)
    view = await harness.run(bad_return)
    assert view["status"] == "FAILED"
    assert view["error"]["type"] == "NotSerializableError"


async def test_a_result_is_committed_before_the_next_step_starts(harness: Harness) -> None:
    from engine.store import Store

    seen: list[tuple[str, str]] = []

    @job(id=unique_id("commitorder"))
    async def ordered(payload: Any, io: IO, ctx: Context) -> Any:
        async def first(task: Task) -> Any:
            return "paid"

        async def second(task: Task) -> Any:
            # Another connection (as a crash-recovering worker would) already sees `first`.
            observer = Store(harness.url)
            try:
                rows = await observer.get_tasks(ctx.run_id)
            finally:
                await observer.close()
            seen.extend((r["key"], r["status"]) for r in rows)
            return "next"

        await io.run_task("first", first)
        return await io.run_task("second", second)

    await harness.start(ordered)
    view = await harness.run(ordered)
    assert view["status"] == "COMPLETED"
    assert seen == [("first", "COMPLETED")]


async def test_json_scalars_replay_exactly(harness: Harness) -> None:
    values = [1, 1.5, "1", "true", True, None, "", [1, "2"], {"a": None}]
    seen: list[list[object]] = []

    @job(id=unique_id("scalars"))
    async def scalars(payload: Any, io: IO, ctx: Context) -> None:
        out: list[object] = []
        for i, value in enumerate(values):

            async def give(task: Task, value: object = value) -> Any:
                return value

            out.append(await io.run_task(f"v{i}", give))
        seen.append(out)
        await io.wait("w", 0.01)
        return None

    await harness.start(scalars)
    view = await harness.run(scalars)
    assert view["status"] == "COMPLETED"
    assert seen == [values, values]
    assert [type(v) for v in seen[1]] == [type(v) for v in values]


async def test_a_parent_retried_in_place_replays_its_completed_subtasks(harness: Harness) -> None:
    calls: list[str] = []

    @job(id=unique_id("inplace"))
    async def inplace(payload: Any, io: IO, ctx: Context) -> Any:
        async def child(task: Task) -> Any:
            calls.append("child")
            return "paid"

        async def parent(task: Task) -> Any:
            calls.append(f"parent-{task.attempt}")
            got = await io.run_task("charge", child)
            if task.attempt == 1:
                raise ConnectionError("flaky after the charge")
            return got

        # min_delay=0: the retry happens in the same execution, without unloading.
        policy = RetryPolicy(max_attempts=2, min_delay=0, max_delay=0)
        return await io.run_task("parent", parent, retry=policy)

    await harness.start(inplace)
    view = await harness.run(inplace)
    assert view["status"] == "COMPLETED", view["error"]
    assert view["output"] == "paid"
    assert calls == ["parent-1", "child", "parent-2"]


async def test_log_lines_of_parallel_branches_are_recorded_once_whatever_their_order(
    harness: Harness,
) -> None:
    executions: list[int] = []

    @job(id=unique_id("branchlogs"))
    async def branch_logs(payload: Any, io: IO, ctx: Context) -> None:
        executions.append(1)

        async def a() -> None:
            if len(executions) > 1:
                await asyncio.sleep(0.02)  # on replay, "A" comes after "B"
            io.logger.info("A")

        async def b() -> None:
            await io.wait("w", 0.05)
            io.logger.info("B")

        await asyncio.gather(a(), b())
        return None

    await harness.start(branch_logs)
    view = await harness.run(branch_logs)
    assert len(executions) == 2
    lines = await harness.engine.run_logs(view["id"])
    # A call-order counter would have taken "B" for the line already written and written
    # "A" twice.
    assert sorted(line["message"] for line in lines) == ["A", "B"]
