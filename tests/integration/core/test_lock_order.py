"""Lock order on PostgreSQL: everything that ends a run or settles a wait takes rows parent
before child and run before task, so that two of them meeting wait for each other instead of
deadlocking (a deadlock costs a second of PostgreSQL's detection and a retry as a transient
error, or an outage line from the scheduler's sweep).

Each test races the real statements, many times, at the store level (no scheduler between the
racers): a deadline sweep, a child's end and its parent's cancel; a poll's end and its run's
cancel. The stores have no patience, so a deadlock is an error here, not a silent retry; and
whatever the interleaving, each race must end in one consistent outcome.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from support import unique_id

from engine import clock
from engine.children import child_run_id
from engine.records import ChildStart, DuePoll, TaskWrite
from engine.store import Store

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(240)]

ITERATIONS = 150
TIMEOUT_ERROR = {"type": "RunTimeoutError", "message": "past its deadline"}


def impatient(url: str) -> Store:
    store = Store(url, pool_size=2)
    store.patience = 0  # a deadlock surfaces as a DatabaseError instead of a silent retry
    return store


async def staggered(n: int, first: Any, *others: Any) -> list[Any]:
    """Runs the racers together, `first` held back 0-3 ms or the others, by round: on a
    quiet machine one racer would otherwise win every round and the race would test one
    interleaving only."""
    lag = (n % 7) * 0.0005

    async def late(coro: Any) -> Any:
        await asyncio.sleep(lag)
        return await coro

    if n % 2:
        return list(await asyncio.gather(late(first), *others))
    return list(await asyncio.gather(first, *(late(o) for o in others)))


async def claim(store: Store, job: str) -> Any:
    [run] = await store.claim_runs("w-" + job, 1, 600, [f"{job}@1"])
    return run


async def parent_waiting_for_child(store: Store, parent_job: str, child_job: str) -> Any:
    """A parent WAITING on its invoke task, and its child RUNNING, past its deadline."""
    parent_id, _ = await store.create_run(parent_job, "1", {}, None)
    parent = await claim(store, parent_job)
    assert parent.id == parent_id
    child_id = child_run_id(parent_id, ("child",), 1)
    task = TaskWrite("[]", "child", "invoke", child_job, "WAITING", 1, 1, params={})
    start = ChildStart(task, child_id, child_job, "1", {}, 0, None, timeout=0.0)
    assert await store.start_children(parent_id, parent.epoch, [start])
    assert await store.suspend_run(parent_id, parent.epoch, None)
    child = await claim(store, child_job)
    assert child.id == child_id
    return parent_id, child


async def test_deadline_sweep_child_end_and_parent_cancel_never_deadlock(pg_head_url: str) -> None:
    parent_job, child_job = unique_id("parent"), unique_id("child")
    setup, a, b, c = (impatient(pg_head_url) for _ in range(4))
    outcomes: dict[tuple[str, str], int] = {}
    try:
        for n in range(ITERATIONS):
            parent_id, child = await parent_waiting_for_child(setup, parent_job, child_job)
            finished, swept, before = await staggered(
                n,
                a.finish_run(child.id, child.epoch, "COMPLETED", output=n, parent_run_id=parent_id),
                b.cancel_expired(lambda deadline: TIMEOUT_ERROR),
                c.cancel_run(parent_id),
            )
            assert before == "WAITING"  # the parent was open: its cancel always acts
            kid = await setup.get_run(child.id)
            parent = await setup.get_run(parent_id)
            [invoke] = await setup.get_tasks(parent_id)
            assert parent["status"] == "CANCELED", parent
            if finished:  # the child ended first: its parent's task has its output
                assert kid["status"] == "COMPLETED" and kid["output"] == n, kid
                assert (invoke["status"], invoke["output"]) == ("COMPLETED", n), invoke
                assert swept == 0
            else:
                assert kid["status"] == "CANCELED", kid
                if swept:  # the deadline ended it, while its parent still waited
                    assert kid["error"] == TIMEOUT_ERROR, kid
                    assert invoke["status"] == "ERRORED", invoke
                    assert invoke["error"]["type"] == "ChildRunError", invoke
                else:  # its parent's cancel ended it first
                    assert kid["error"]["type"] == "ParentRunEnded", kid
                    assert invoke["status"] == "CANCELED", invoke
            key = (kid["status"], "swept" if swept else "-")
            outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        for store in (setup, a, b, c):
            await store.close()
    # The race really raced: more than one of its outcomes happened.
    assert len(outcomes) > 1, outcomes


async def test_poll_end_and_run_cancel_never_deadlock(pg_head_url: str) -> None:
    job_id = unique_id("polled")
    setup, a, b = (impatient(pg_head_url) for _ in range(3))
    outcomes: dict[str, int] = {}
    try:
        for n in range(ITERATIONS):
            run_id, _ = await setup.create_run(job_id, "1", {}, None)
            run = await claim(setup, job_id)
            now = clock.now()
            task = TaskWrite(
                "[]", "poll", "poll", "poll", "WAITING", 1, 1, params={}, poller="p",
                poll_state={}, next_poll_at=now + 600, started_at=now,
            )  # fmt: skip
            assert await setup.write_task(run_id, run.epoch, task)
            assert await setup.suspend_run(run_id, run.epoch, None)
            [row] = await setup.get_tasks(run_id)
            poll = DuePoll(row["id"], run_id, "p", {}, {}, now)
            _, before = await staggered(
                n, a.finish_poll(poll, output=n, poll_state={}), b.cancel_run(run_id)
            )
            assert before == "WAITING"
            [task_row] = await setup.get_tasks(run_id)
            view = await setup.get_run(run_id)
            assert view["status"] == "CANCELED", view
            # One outcome for the task: the poll's result, or the cancel, never both.
            if task_row["status"] == "COMPLETED":
                assert task_row["output"] == n, task_row
            else:
                assert task_row["status"] == "CANCELED" and task_row["output"] is None, task_row
            outcomes[task_row["status"]] = outcomes.get(task_row["status"], 0) + 1
    finally:
        for store in (setup, a, b):
            await store.close()
    assert len(outcomes) > 1, outcomes


async def test_a_plain_cancel_records_no_error_and_a_deadline_its_own(pg_head_url: str) -> None:
    """The one cancel statement (D7): `engine runs cancel` leaves `error` empty, a deadline
    records its RunTimeoutError; both end the run's open tasks and settle its parent."""
    parent_job, child_job = unique_id("parent"), unique_id("child")
    store = Store(pg_head_url, pool_size=2)
    try:
        parent_id, child = await parent_waiting_for_child(store, parent_job, child_job)
        assert await store.cancel_expired(lambda deadline: TIMEOUT_ERROR) == 1
        assert (await store.get_run(child.id))["error"] == TIMEOUT_ERROR
        [invoke] = await store.get_tasks(parent_id)
        assert invoke["status"] == "ERRORED", invoke
        assert f"child run {child.id}" in invoke["error"]["message"]
        assert "RunTimeoutError: past its deadline" in invoke["error"]["message"]
        assert await store.cancel_run(parent_id) == "WAITING"
        parent = await store.get_run(parent_id)
        assert (parent["status"], parent["error"]) == ("CANCELED", None), parent
        assert json.dumps(invoke["error"])  # recorded as plain JSON
    finally:
        await store.close()


async def lost_child_out_of_recoveries(store: Store, parent_job: str, child_job: str) -> Any:
    """A parent WAITING on its invoke task, and its child RUNNING with a lapsed lease after
    one recovery already: the next claim with `max_recoveries=1` fails it."""
    parent_id, _ = await store.create_run(parent_job, "1", {}, None)
    parent = await claim(store, parent_job)
    child_id = child_run_id(parent_id, ("child",), 1)
    task = TaskWrite("[]", "child", "invoke", child_job, "WAITING", 1, 1, params={})
    start = ChildStart(task, child_id, child_job, "1", {}, 0, None)
    assert await store.start_children(parent_id, parent.epoch, [start])
    assert await store.suspend_run(parent_id, parent.epoch, None)
    for _ in range(2):  # executed, lost; recovered, lost again
        [run] = await store.claim_runs("w-lost", 1, 0, [f"{child_job}@1"], 1)
        assert run.id == child_id
        clock.advance(1)  # past the zero-second lease
    return parent_id, child_id


async def test_recovery_limit_claim_and_parent_cancel_never_deadlock(pg_head_url: str) -> None:
    parent_job, child_job = unique_id("parent"), unique_id("child")
    setup, a, b = (impatient(pg_head_url) for _ in range(3))
    outcomes: dict[str, int] = {}
    try:
        for n in range(ITERATIONS):
            parent_id, child_id = await lost_child_out_of_recoveries(setup, parent_job, child_job)
            claimed, before = await staggered(
                n, a.claim_runs("w-claim", 1, 600, [f"{child_job}@1"], 1), b.cancel_run(parent_id)
            )
            assert claimed == [] and before == "WAITING"  # a failed run is never handed out
            kid = await setup.get_run(child_id)
            parent = await setup.get_run(parent_id)
            [invoke] = await setup.get_tasks(parent_id)
            assert parent["status"] == "CANCELED", parent
            if kid["status"] == "FAILED":  # the claim failed it first: its parent heard of it
                assert kid["error"]["type"] == "RecoveryLimitError", kid
                assert invoke["status"] == "ERRORED", invoke
                assert invoke["error"]["type"] == "ChildRunError", invoke
            else:  # the parent's cancel ended it first
                assert kid["status"] == "CANCELED", kid
                assert kid["error"]["type"] == "ParentRunEnded", kid
                assert invoke["status"] == "CANCELED", invoke
            assert kid["lease_owner"] is None, kid
            # The epoch tells whether the cancel came before the claim (3: two setup claims
            # and the cancel) or after it (4, or FAILED: the claim failed it first).
            key = f"{kid['status']}@{kid['lease_epoch']}"
            outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        for store in (setup, a, b):
            await store.close()
    assert len(outcomes) > 1, outcomes
