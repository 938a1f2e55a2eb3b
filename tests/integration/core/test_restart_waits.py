"""A PostgreSQL restart while runs wait: one for an event, one for its child (whose step is in
flight through the restart). A private cluster (tests/faults.py, `PrivatePostgres`) is restarted
with `pg_ctl restart -m fast`, which ends every connection; the in-process worker rides it out,
and each run resumes once: nothing lost, nothing run twice, the child created once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from faults import PrivatePostgres, private_pg  # noqa: F401
from support import Harness, unique_id, until

from engine import IO, Context, DatabaseError, Task, job

pytestmark = [pytest.mark.timeout(240)]


async def status_of(h: Harness, run_id: str) -> str | None:
    """The run's status, or None while the database is away (the test only watches)."""
    try:
        return str((await h.engine.get_run(run_id))["status"])
    except DatabaseError:
        return None


async def reach(h: Harness, run_id: str, *wanted: str, timeout: float = 120.0) -> dict[str, Any]:
    """The run, once its status is one of `wanted`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (await status_of(h, run_id)) not in wanted:
        assert asyncio.get_running_loop().time() < deadline, f"run {run_id} never got {wanted}"
        await asyncio.sleep(0.05)
    return await h.engine.get_run(run_id)


async def final(h: Harness, run_id: str) -> dict[str, Any]:
    return await reach(h, run_id, "COMPLETED", "FAILED", "CANCELED")


async def test_runs_waiting_for_an_event_and_a_child_resume_once_after_a_restart(
    private_pg: PrivatePostgres,  # noqa: F811
) -> None:
    calls: Counter[str] = Counter()
    release = asyncio.Event()
    key = unique_id("order")

    @job(id=unique_id("child"))
    async def child(payload: Any, io: IO, ctx: Context) -> str:
        async def held(task: Task) -> str:
            calls["child"] += 1
            await release.wait()  # in flight while the server restarts
            return "made"

        return await io.run_task("held", held)

    @job(id=unique_id("parent"))
    async def parent(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> str:
            calls["parent-" + task.key] += 1
            return task.key

        await io.run_task("before", step)
        made = await io.invoke("child", child.id, None)
        await io.run_task("after", step)
        return made

    @job(id=unique_id("eventer"))
    async def eventer(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> str:
            calls["eventer-" + task.key] += 1
            return task.key

        await io.run_task("before", step)
        got = await io.wait_for_event("paid", "paid", match={"order": key})
        await io.run_task("after", step)
        return got

    h = Harness(private_pg.create_database("restart"))
    try:
        await h.start(parent, child, eventer, lease_seconds=60)
        parent_id = await h.engine.trigger(parent.id, None)
        event_run = await h.engine.trigger(eventer.id, None)
        await until(lambda: calls["child"] == 1, "the child's step running", 60)
        for run_id in (parent_id, event_run):
            await reach(h, run_id, "WAITING")

        # Off the loop: the worker keeps running (and failing) while pg_ctl waits.
        await asyncio.to_thread(private_pg.restart)

        # Sent as soon as the server answers again (send_event retries a transient error).
        sent = await h.engine.send_event("paid", {"order": key, "cents": 1200})
        assert sent.woke == [event_run], sent
        release.set()
        done_parent = await final(h, parent_id)
        done_event = await final(h, event_run)
        assert done_parent["status"] == "COMPLETED", done_parent
        assert done_parent["output"] == "made"
        assert done_event["status"] == "COMPLETED", done_event
        assert done_event["output"] == {"order": key, "cents": 1200}
        assert calls == {
            "child": 1,
            "parent-before": 1,
            "parent-after": 1,
            "eventer-before": 1,
            "eventer-after": 1,
        }, calls
        dbname = "restart"
        children = private_pg.execute(
            "SELECT status FROM engine_runs WHERE parent_run_id = $1", parent_id, dbname=dbname
        )
        assert [c["status"] for c in children] == ["COMPLETED"], children
        waits = private_pg.execute(
            "SELECT status, output FROM engine_tasks WHERE run_id = $1 AND kind = 'event'",
            event_run,
            dbname=dbname,
        )
        assert [w["status"] for w in waits] == ["COMPLETED"], waits
    finally:
        release.set()
        await h.close()
