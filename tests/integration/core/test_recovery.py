"""The bound on recoveries (INVARIANT 10): a run whose executions keep ending without an
outcome is failed with a RecoveryLimitError listing them, and `runs retry` resumes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from support import Harness, lose_executions, unique_id

from engine import IO, Context, Task, clock, job
from engine.client import Engine
from engine.records import Registration, TaskWrite
from engine.store import Store


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[Engine]:
    async with Engine(db_url) as opened:
        await opened.upgrade()
        await opened.store.register_jobs([Registration("j", "1", None)])
        yield opened


async def test_a_reclaim_records_the_lost_execution_and_past_the_bound_fails_the_run_once(
    engine: Engine, db_url: str
) -> None:
    store = engine.store
    run_id = await engine.trigger("j", {})
    (first,) = await store.claim_runs("w1", 1, 30, ["j@1"], max_recoveries=1)
    clock.advance(31)  # w1's lease lapses: its execution is lost
    (second,) = await store.claim_runs("w2", 1, 30, ["j@1"], max_recoveries=1)
    assert (second.attempt, second.epoch) == (2, first.epoch + 1)
    row = await engine.get_run(run_id)
    assert row["recoveries"] == 1
    [lost] = row["lost_executions"]
    assert {k: lost[k] for k in ("attempt", "epoch", "worker")} == {
        "attempt": 1,
        "epoch": first.epoch,
        "worker": "w1",
    }
    assert datetime.fromisoformat(lost["lost_at"]).utcoffset() is not None

    clock.advance(31)  # lost again: now past the bound; two workers race to claim it
    other = Store(db_url)
    try:
        claims = await asyncio.gather(
            store.claim_runs("w3", 1, 30, ["j@1"], max_recoveries=1),
            other.claim_runs("w4", 1, 30, ["j@1"], max_recoveries=1),
        )
    finally:
        await other.close()
    assert list(claims) == [[], []]
    row = await engine.get_run(run_id)
    assert row["status"] == "FAILED"
    assert row["completed_at"] is not None and row["lease_owner"] is None
    assert row["recoveries"] == 1
    error = row["error"]
    assert error["type"] == "RecoveryLimitError"
    assert [(e["attempt"], e["worker"]) for e in error["executions"]] == [(1, "w1"), (2, "w2")]
    assert error["executions"] == row["lost_executions"]  # recorded once, not once per worker
    assert "attempt 1 on worker w1 lost at" in error["message"]
    assert "attempt 2 on worker w2 lost at" in error["message"]
    assert f"`engine runs retry {run_id}` resumes it" in error["message"]
    # The lost execution may still be alive somewhere (a paused worker): it can record nothing,
    # and cannot turn the failed run into a completed one.
    late = TaskWrite("[]", "late", "task", "late", "COMPLETED", 1, 1, output=1)
    assert not await store.write_task(run_id, second.epoch, late)
    assert not await store.finish_run(run_id, second.epoch, "COMPLETED", output=1)
    assert (await engine.get_run(run_id))["status"] == "FAILED"
    view = await engine.show_run(run_id)
    assert view["tasks"] == []
    assert set(view) == {
        "id", "job_id", "version", "status", "payload", "output", "error", "created_at",
        "started_at", "completed_at", "waiting_for", "tasks", "delayed_until", "deadline_at",
        "parent_run_id", "parent_task", "child_runs", "priority", "usage",
    }  # fmt: skip

    await engine.retry(run_id)
    row = await engine.get_run(run_id)
    assert (row["status"], row["recoveries"], len(row["lost_executions"])) == ("QUEUED", 0, 2)
    (again,) = await store.claim_runs("w5", 1, 30, ["j@1"], max_recoveries=1)
    assert again.id == run_id


async def test_a_run_that_keeps_losing_its_execution_fails_and_retry_finishes_it(
    harness: Harness,
) -> None:
    attempts: list[int] = []
    healthy = asyncio.Event()

    @job(id=unique_id("fragile"))
    async def fragile(payload: Any, io: IO, ctx: Context) -> Any:
        async def hang(task: Task) -> Any:
            attempts.append(ctx.attempt)
            await healthy.wait()
            return "done"

        return await io.run_task("hang", hang)

    scheduler = await harness.start(fragile, lease_seconds=1, max_recoveries=2)
    run_id = await harness.engine.trigger(fragile.id)
    await lose_executions(scheduler, run_id, attempts, times=3)
    failed = await harness.engine.wait_for(run_id, 30)
    assert failed["status"] == "FAILED", failed
    assert attempts == [1, 2, 3]  # not executed a fourth time
    assert failed["error"]["type"] == "RecoveryLimitError"
    lost = failed["error"]["executions"]
    assert [(e["attempt"], e["worker"]) for e in lost] == [
        (a, scheduler.worker_id) for a in (1, 2, 3)
    ]
    view = await harness.engine.show_run(run_id)
    assert [(t["key"], t["status"]) for t in view["tasks"]] in ([], [("hang", "CANCELED")])

    healthy.set()
    await harness.engine.retry(run_id)
    done = await harness.engine.wait_for(run_id, 30)
    assert (done["status"], done["output"], done["recoveries"]) == ("COMPLETED", "done", 0)
    assert attempts == [1, 2, 3, 4]


async def test_a_claimer_gone_before_failing_an_exhausted_run_leaves_it_to_the_next(
    engine: Engine,
) -> None:
    """The claim fails an exhausted run in a second transaction (lock order: its parent first).
    A claimer that dies between the two leaves the run RUNNING under a lease without owner:
    once it lapses, the next claim fails the run, listing only the executions really lost."""
    store = engine.store
    run_id = await engine.trigger("j", {})
    for worker in ("w1", "w2"):
        await store.claim_runs(worker, 1, 30, ["j@1"], max_recoveries=1)
        clock.advance(31)
    now = clock.now()
    values = {"worker": "w3", "now": now, "expires": now + 30, "limit": 1,
              "job_keys": ["j@1"], "max_recoveries": 1}  # fmt: skip
    async with store.begin() as conn:  # the claim's own transaction, and nothing after it
        [row] = (await conn.execute(store._sql.claim_runs, values)).all()
    assert row.id == run_id and row.lease_owner is None
    left = await engine.get_run(run_id)
    assert (left["status"], left["lease_owner"]) == ("RUNNING", None)
    assert await store.claim_runs("w4", 1, 30, ["j@1"], max_recoveries=1) == []  # lease holds
    clock.advance(31)
    assert await store.claim_runs("w5", 1, 30, ["j@1"], max_recoveries=1) == []
    failed = await engine.get_run(run_id)
    assert failed["status"] == "FAILED" and failed["error"]["type"] == "RecoveryLimitError"
    executions = [(e["attempt"], e["worker"]) for e in failed["error"]["executions"]]
    assert executions == [(1, "w1"), (2, "w2")]
    assert len(failed["lost_executions"]) == 2  # the dead claimer's lease is no execution
