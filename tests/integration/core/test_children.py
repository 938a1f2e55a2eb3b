"""Child runs (`io.invoke`): output and errors reach the parent, fan-out, cancel cascade,
replay without re-creating anything, fencing and once-only creation. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import bindparam, text
from support import Harness, unique_id

from engine import IO, ChildRunError, Context, PayloadValidationError, clock, job
from engine.children import child_run_id
from engine.records import ChildStart, TaskWrite
from engine.schema import UTCDateTime


class Summary(BaseModel):
    doc: int
    words: int


async def _rows(harness: Harness, sql: str, **params: Any) -> list[Any]:
    async with harness.store.begin() as conn:
        return list((await conn.execute(text(sql), params)).all())


async def _children(harness: Harness, parent: str) -> list[Any]:
    return await _rows(
        harness,
        "SELECT id, job_id, status, parent_task_id FROM engine_runs WHERE parent_run_id = :p",
        p=parent,
    )


async def test_a_childs_output_reaches_its_parent_with_its_type(harness: Harness) -> None:
    @job(id=unique_id("summarize"))
    async def summarize(payload: dict[str, int], io: IO, ctx: Context) -> Summary:
        return Summary(doc=payload["doc"], words=payload["doc"] * 10)

    @job(id=unique_id("parent"))
    async def parent(payload: Any, io: IO, ctx: Context) -> Any:
        summary = await io.invoke("summarize-7", summarize.id, {"doc": 7})
        assert isinstance(summary, Summary)  # the child's own type, rebuilt
        return {"words": summary.words}

    await harness.start(parent, summarize)
    view = await harness.run(parent)
    assert view["status"] == "COMPLETED", view["error"]
    assert view["output"] == {"words": 70}
    (task,) = view["tasks"]
    assert (task["key"], task["name"], task["status"]) == ("summarize-7", summarize.id, "COMPLETED")
    (child,) = view["child_runs"]
    assert task["params"] == {"job_id": summarize.id, "version": "1", "run_id": child["id"]}
    assert (child["job_id"], child["status"], child["task"]) == (
        summarize.id,
        "COMPLETED",
        "summarize-7",
    )
    shown = await harness.engine.show_run(child["id"])
    assert (shown["parent_run_id"], shown["parent_task"]) == (view["id"], "summarize-7")
    assert shown["payload"] == {"doc": 7} and shown["child_runs"] == []
    assert view["parent_run_id"] is None and view["parent_task"] is None


async def test_a_childs_failure_reaches_its_parent_as_child_run_error(harness: Harness) -> None:
    @job(id=unique_id("fails"))
    async def fails(payload: Any, io: IO, ctx: Context) -> Any:
        raise ValueError("no such document")

    @job(id=unique_id("catches"))
    async def catches(payload: Any, io: IO, ctx: Context) -> Any:
        try:
            await io.invoke("child", fails.id)
        except ChildRunError as exc:
            return {"run_id": exc.run_id, "status": exc.status, "error": exc.error}
        return "not reached"

    @job(id=unique_id("uncaught"))
    async def uncaught(payload: Any, io: IO, ctx: Context) -> Any:
        return await io.invoke("child", fails.id)

    await harness.start(catches, uncaught, fails)
    view = await harness.run(catches)
    (child,) = view["child_runs"]
    assert view["output"] == {
        "run_id": child["id"],
        "status": "FAILED",
        "error": {"type": "ValueError", "message": "no such document", "module": "builtins"},
    }
    failed = await harness.run(uncaught)
    assert failed["status"] == "FAILED"
    (child,) = failed["child_runs"]
    assert failed["error"]["type"] == "ChildRunError"
    assert failed["error"]["run_id"] == child["id"]
    assert (
        f"child run {child['id']} ({fails.id}) failed: ValueError: no such document"
        in (failed["error"]["message"])
    )
    assert failed["tasks"][0]["status"] == "ERRORED"


async def test_200_children_fan_out_and_the_parent_collects_them_in_order(
    harness: Harness,
) -> None:
    executions: Counter[int] = Counter()
    parent_runs: list[int] = []

    @job(id=unique_id("summarize-doc"))
    async def summarize_doc(payload: dict[str, int], io: IO, ctx: Context) -> Any:
        executions[payload["doc"]] += 1
        await asyncio.sleep(0.001 * (payload["doc"] % 7))  # they end out of order
        return {"doc": payload["doc"], "summary": f"summary of {payload['doc']}"}

    @job(id=unique_id("fan-out"))
    async def fan_out(payload: Any, io: IO, ctx: Context) -> Any:
        parent_runs.append(1)
        results = await asyncio.gather(
            *(io.invoke(f"summarize-{i}", summarize_doc.id, {"doc": i}) for i in range(200))
        )
        return [r["doc"] for r in results]

    # Three workers share the database.
    for _ in range(3):
        await harness.start(fan_out, summarize_doc, concurrency=50)
    view = await harness.run(fan_out, timeout=120)
    assert view["status"] == "COMPLETED", view["error"]
    assert view["output"] == list(range(200))
    # Every child ran (code outside a step may run again if an execution loses its lease on
    # this busy machine: what must hold is one child run per invoke, below).
    assert set(executions) == set(range(200))
    assert [t["key"] for t in view["tasks"]] == [f"summarize-{i}" for i in range(200)]
    children = await _children(harness, view["id"])
    assert len(children) == 200 and {c.status for c in children} == {"COMPLETED"}
    payloads = await _rows(
        harness, "SELECT payload FROM engine_runs WHERE parent_run_id = :p", p=view["id"]
    )
    docs = sorted(json.loads(r.payload)["doc"] if isinstance(r.payload, str) else r.payload["doc"]
                  for r in payloads)  # fmt: skip
    assert docs == list(range(200))  # one child per invoke, none twice
    assert [c["task"] for c in view["child_runs"]] == [f"summarize-{i}" for i in range(200)]
    # All 200 were created together, in the one transaction of the parent's first execution.
    created = await _rows(
        harness,
        "SELECT DISTINCT created_at FROM engine_runs WHERE parent_run_id = :p",
        p=view["id"],
    )
    assert len(created) == 1 and len(parent_runs) >= 2


async def test_a_parent_replay_after_its_children_ended_recreates_nothing(
    harness: Harness,
) -> None:
    effects: list[str] = []

    @job(id=unique_id("child"))
    async def child(payload: dict[str, int], io: IO, ctx: Context) -> int:
        effects.append(f"child {payload['n']}")
        return payload["n"] * 2

    @job(id=unique_id("replayed"))
    async def replayed(payload: Any, io: IO, ctx: Context) -> Any:
        doubled = await asyncio.gather(*(io.invoke(f"c{n}", child.id, {"n": n}) for n in range(5)))

        async def after(task: Any) -> str:
            effects.append("after")
            return "after"

        await io.run_task("after", after)
        # A wait after the children: the parent is replayed from the top once it is due.
        await io.wait("nap", 0.05)
        return list(doubled)

    await harness.start(replayed, child)
    view = await harness.run(replayed)
    assert view["output"] == [0, 2, 4, 6, 8]
    assert sorted(effects) == ["after", *sorted(f"child {n}" for n in range(5))]
    assert len(await _children(harness, view["id"])) == 5


async def test_replayed_invokes_come_back_the_same_however_they_are_awaited(
    harness: Harness,
) -> None:
    """A replay returns a settled invoke's outcome at once (engine.replay.Recorded): through a
    gather, tasks or one by one, the values and errors are those of the first
    execution, in the order of the calls."""
    seen: list[Any] = []

    @job(id=unique_id("child"))
    async def child(payload: dict[str, int], io: IO, ctx: Context) -> int:
        if payload["n"] < 0:
            raise ValueError("negative")
        return payload["n"] * 2

    @job(id=unique_id("awaits"))
    async def awaits(payload: Any, io: IO, ctx: Context) -> Any:
        gathered = await asyncio.gather(*(io.invoke(f"g{n}", child.id, {"n": n}) for n in range(3)))
        tasked = await asyncio.create_task(io.invoke("task", child.id, {"n": 10}))
        tasks = [asyncio.create_task(io.invoke(f"t{n}", child.id, {"n": n})) for n in (5, 6)]
        grouped = [await task for task in tasks]
        mixed = await asyncio.gather(
            io.invoke("ok", child.id, {"n": 4}),
            io.invoke("bad", child.id, {"n": -1}),
            return_exceptions=True,
        )
        try:
            await io.invoke("bad-alone", child.id, {"n": -2})
            alone = "not raised"
        except ChildRunError as exc:
            alone = exc.status
        one_by_one = [await io.invoke(f"s{n}", child.id, {"n": n}) for n in range(2)]
        observed = {
            "gathered": list(gathered),
            "task": tasked,
            "tasks": grouped,
            "mixed": [mixed[0], type(mixed[1]).__name__, getattr(mixed[1], "status", None)],
            "alone": alone,
            "one_by_one": one_by_one,
        }
        seen.append(observed)
        await io.wait("nap", 0.05)  # then replayed from the top, every invoke settled
        return observed

    await harness.start(awaits, child)
    view = await harness.run(awaits)
    assert view["status"] == "COMPLETED", view["error"]
    expected = {
        "gathered": [0, 2, 4],
        "task": 20,
        "tasks": [10, 12],
        "mixed": [8, "ChildRunError", "FAILED"],
        "alone": "FAILED",
        "one_by_one": [0, 2],
    }
    assert view["output"] == expected
    assert len(seen) >= 2 and all(observed == expected for observed in seen)
    assert len(await _children(harness, view["id"])) == 11  # none started again


async def test_cancel_of_a_parent_cancels_its_children_and_theirs(harness: Harness) -> None:
    @job(id=unique_id("sleeper"))
    async def sleeper(payload: Any, io: IO, ctx: Context) -> Any:
        await io.wait("long", 3600)

    @job(id=unique_id("middle"))
    async def middle(payload: Any, io: IO, ctx: Context) -> Any:
        return await asyncio.gather(io.invoke("g1", sleeper.id), io.invoke("g2", sleeper.id))

    @job(id=unique_id("top"))
    async def top(payload: Any, io: IO, ctx: Context) -> Any:
        return await asyncio.gather(io.invoke("m", middle.id), io.invoke("s", sleeper.id))

    await harness.start(top, middle, sleeper)
    run_id = await harness.engine.trigger(top.id)

    async def tree() -> list[Any]:
        return await _rows(
            harness,
            "SELECT id, status, parent_run_id FROM engine_runs WHERE id <> :top",
            top=run_id,
        )

    found: list[Any] = []

    async def all_waiting() -> bool:
        found[:] = await tree()
        return len(found) == 4 and {r.status for r in found} == {"WAITING"}

    await _until_async(all_waiting, "the parent, 2 children and 2 grandchildren to wait")
    assert await harness.engine.cancel(run_id) == "WAITING"
    statuses = {r.id: r.status for r in await tree()}
    assert set(statuses.values()) == {"CANCELED"}, statuses
    grandchild = next(r.id for r in found if r.parent_run_id != run_id)
    shown = await harness.engine.show_run(grandchild)
    assert shown["error"]["type"] == "ParentRunEnded"
    assert {t["status"] for t in shown["tasks"]} == {"CANCELED"}
    parent = await harness.engine.show_run(run_id)
    assert {t["status"] for t in parent["tasks"]} == {"CANCELED"}


async def test_a_child_canceled_on_its_own_makes_the_parents_invoke_raise(
    harness: Harness,
) -> None:
    @job(id=unique_id("sleeper"))
    async def sleeper(payload: Any, io: IO, ctx: Context) -> Any:
        await io.wait("long", 3600)

    @job(id=unique_id("waits"))
    async def waits(payload: Any, io: IO, ctx: Context) -> Any:
        try:
            await io.invoke("child", sleeper.id)
        except ChildRunError as exc:
            return {"status": exc.status, "run_id": exc.run_id, "error": exc.error}
        return "not reached"

    await harness.start(waits, sleeper)
    run_id = await harness.engine.trigger(waits.id)
    children: list[Any] = []

    async def child_waits() -> bool:
        children[:] = await _children(harness, run_id)
        return len(children) == 1 and children[0].status == "WAITING"

    await _until_async(child_waits, "the child to wait")
    (listed,) = await harness.engine.list_runs(waits.id)
    assert listed["waiting_for"] == {
        "reason": "child",
        "task": "child",
        "run_id": children[0].id,
        "job_id": sleeper.id,
        "summary": f"child run {children[0].id} ({sleeper.id}, task 'child')",
    }
    await harness.engine.cancel(children[0].id)
    run = await harness.engine.wait_for(run_id, 30)
    assert run["status"] == "COMPLETED"
    assert run["output"] == {"status": "CANCELED", "run_id": children[0].id, "error": None}


async def test_an_invalid_payload_fails_the_step_before_anything_is_written(
    harness: Harness,
) -> None:
    class Doc(BaseModel):
        doc: int

    @job(id=unique_id("typed-child"), payload=Doc)
    async def typed_child(payload: Doc, io: IO, ctx: Context) -> int:
        return payload.doc

    @job(id=unique_id("bad-parent"))
    async def bad_parent(payload: Any, io: IO, ctx: Context) -> Any:
        return await io.invoke("child", typed_child.id, {"doc": "seven"})

    await harness.start(bad_parent, typed_child)
    view = await harness.run(bad_parent)
    assert view["status"] == "FAILED"
    assert view["error"]["type"] == PayloadValidationError.__name__
    assert "doc: Input should be a valid integer" in view["error"]["message"]
    assert view["tasks"] == [] and view["child_runs"] == []
    assert await _children(harness, view["id"]) == []


async def test_starting_children_is_fenced_and_happens_once(harness: Harness) -> None:
    """A zombie execution (an old lease epoch) creates nothing; the same start committed twice
    (a commit retried after a lost connection) creates one child."""

    @job(id=unique_id("leaf"))
    async def leaf(payload: Any, io: IO, ctx: Context) -> Any:
        return None

    await harness.engine.upgrade()
    store = harness.store
    parent_id, _ = await store.create_run("some-parent", "1", {}, None)
    (claimed,) = await store.claim_runs("w", 1, 30, ["some-parent@1"])
    path = ("child",)
    start = ChildStart(
        TaskWrite("[]", "child", "invoke", leaf.id, "WAITING", 1, 1, params={}),
        child_run_id(parent_id, path, 1),
        leaf.id,
        "1",
        {},
        0,
        None,
    )
    assert not await store.start_children(parent_id, claimed.epoch - 1, [start])
    assert await _children(harness, parent_id) == []
    assert await _rows(harness, "SELECT id FROM engine_tasks WHERE run_id = :r", r=parent_id) == []
    assert await store.start_children(parent_id, claimed.epoch, [start])
    assert await store.start_children(parent_id, claimed.epoch, [start])
    (child,) = await _children(harness, parent_id)
    (task,) = await _rows(
        harness, "SELECT id, status, attempts FROM engine_tasks WHERE run_id = :r", r=parent_id
    )
    assert (child.id, child.parent_task_id) == (start.id, task.id)
    assert (task.status, task.attempts) == ("WAITING", 1)


@pytest.mark.parametrize("outcome", ["FAILED", "CANCELED"])
async def test_runs_retry_of_the_parent_starts_a_new_child(harness: Harness, outcome: str) -> None:
    attempts: list[int] = []

    @job(id=unique_id("flaky"))
    async def flaky(payload: Any, io: IO, ctx: Context) -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            if outcome == "CANCELED":
                await io.wait("long", 3600)
            raise RuntimeError("first time")
        return "fine"

    @job(id=unique_id("retried"))
    async def retried(payload: Any, io: IO, ctx: Context) -> Any:
        return await io.invoke("child", flaky.id)

    await harness.start(retried, flaky)
    run_id = await harness.engine.trigger(retried.id)
    if outcome == "CANCELED":
        children: list[Any] = []

        async def child_waits() -> bool:
            children[:] = await _children(harness, run_id)
            return len(children) == 1 and children[0].status == "WAITING"

        await _until_async(child_waits, "the child to wait")
        await harness.engine.cancel(children[0].id)
    assert (await harness.engine.wait_for(run_id, 30))["status"] == "FAILED"
    await harness.engine.retry(run_id)
    run = await harness.engine.wait_for(run_id, 30)
    assert (run["status"], run["output"]) == ("COMPLETED", "fine")
    view = await harness.engine.show_run(run_id)
    assert [c["status"] for c in view["child_runs"]] == [outcome, "COMPLETED"]
    (task,) = view["tasks"]
    assert task["attempts"] == 2 and task["params"]["run_id"] == view["child_runs"][1]["id"]


async def _until_async(check: Any, what: str, timeout: float = 30.0) -> None:
    """Polls an async condition (the machine may be slow: a generous deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_a_parents_usage_includes_its_childrens(harness: Harness) -> None:
    @job(id=unique_id("grandchild"))
    async def grandchild(payload: Any, io: IO, ctx: Context) -> int:
        async def call(task: Any) -> int:
            return 1

        return await io.run_task("call", call)

    @job(id=unique_id("child"))
    async def child(payload: Any, io: IO, ctx: Context) -> Any:
        return await io.invoke("g", grandchild.id)

    @job(id=unique_id("parent"))
    async def parent(payload: Any, io: IO, ctx: Context) -> Any:
        return await io.invoke("c", child.id)

    await harness.start(parent, child, grandchild)
    view = await harness.run(parent)
    assert view["output"] == 1 and view["usage"] is None
    # The grandchild's step made a paid call (its usage row, as the OpenAI integration writes).
    (task,) = await _rows(harness, "SELECT id, run_id FROM engine_tasks WHERE name = 'call'")
    async with harness.store.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO engine_task_usage (task_id, run_id, provider, model, prompt_tokens, "
                "completion_tokens, cached_tokens, reasoning_tokens, total_tokens, recorded_at) "
                "VALUES (:t, :r, 'openai', 'unpriced-model', 10, 5, 0, 0, 15, :now)"
            ).bindparams(bindparam("now", type_=UTCDateTime)),
            {"t": task.id, "r": task.run_id, "now": datetime(2026, 11, 30, 12, tzinfo=UTC)},
        )
    shown = await harness.engine.show_run(view["id"])
    assert shown["usage"]["calls"] == 1 and shown["usage"]["total_tokens"] == 15
    assert shown["usage"]["child_runs"]["total_tokens"] == 15
    assert shown["usage"]["cost"] is None  # an unknown model's cost stays unknown


async def test_a_deadline_ends_children_like_a_cancel(harness: Harness) -> None:
    """A parent past its deadline cancels its children; a child past its own makes the
    parent's invoke raise (the deadline sweep ends runs the way `runs cancel` does)."""

    @job(id=unique_id("slow-child"), timeout=timedelta(hours=1))
    async def slow_child(payload: Any, io: IO, ctx: Context) -> Any:
        await io.wait("nap", 86400)
        return "rested"

    @job(id=unique_id("patient"))
    async def patient(payload: Any, io: IO, ctx: Context) -> Any:
        try:
            await io.invoke("child", slow_child.id)
        except ChildRunError as error:
            return {"child": error.status, "type": (error.error or {}).get("type")}
        return "not reached"

    @job(id=unique_id("hurried"), timeout=timedelta(minutes=30))
    async def hurried(payload: Any, io: IO, ctx: Context) -> Any:
        await io.invoke("child", slow_child.id)
        return "not reached"

    worker = await harness.start(patient, hurried, slow_child)
    waits_on_child = await harness.engine.trigger(patient.id)
    canceled_parent = await harness.engine.trigger(hurried.id)
    for parent in (waits_on_child, canceled_parent):
        await _until_async(
            lambda p=parent: _children_waiting(harness, p), f"the child of {parent} waits"
        )
    clock.advance(3601)  # past both deadlines: the parent's 30 min and the child's hour
    worker.wake.set()
    await _until_async(lambda: _ended(harness, waits_on_child), "the patient parent ends")
    view = await harness.engine.show_run(waits_on_child)
    assert view["status"] == "COMPLETED", view["error"]
    assert view["output"] == {"child": "CANCELED", "type": "RunTimeoutError"}
    await _until_async(lambda: _ended(harness, canceled_parent), "the hurried parent ends")
    (child,) = await _children(harness, canceled_parent)
    assert child.status == "CANCELED"


async def _children_waiting(harness: Harness, parent: str) -> bool:
    return [c.status for c in await _children(harness, parent)] == ["WAITING"]


async def _ended(harness: Harness, run_id: str) -> bool:
    status = (await harness.engine.get_run(run_id))["status"]
    return status in ("COMPLETED", "FAILED", "CANCELED")
