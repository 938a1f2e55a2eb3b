"""Events and signals (docs/triggers.md): who a delivery wakes, exactly once, and what a timeout,
a duplicate, a cancel or a stopped worker change about it. Each test runs on SQLite and on
PostgreSQL, with three workers where several could race."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from faults import TcpProxy, with_port
from pydantic import BaseModel
from sqlalchemy import text
from support import Harness, unique_id

from engine import (
    IO,
    Context,
    Engine,
    EngineError,
    InvalidRunStateError,
    Job,
    PayloadValidationError,
    RunNotFoundError,
    Task,
    job,
)
from engine.worker import register

pytestmark = pytest.mark.timeout(120)


class Order(BaseModel):
    order: int


@pytest.fixture
async def workers(db_url: str) -> AsyncIterator[list[Harness]]:
    """Three workers, each with its own connections, on one database."""
    harnesses = [Harness(db_url) for _ in range(3)]
    try:
        yield harnesses
    finally:
        for h in harnesses:
            await h.close()


def approval_job(after: Counter[str], timeout: float | None = None) -> Job:
    """Waits for "draft.reviewed" about its own draft, then runs one step counted in `after`."""

    @job(id=unique_id("approve"))
    async def approve(payload: Any, io: IO, ctx: Context) -> Any:
        review = await io.wait_for_event(
            "review",
            "draft.reviewed",
            match={"draft_id": payload["draft_id"]},
            timeout=timeout,
        )

        async def publish(task: Task) -> str:
            after[ctx.run_id] += 1
            return "published"

        return {"review": review, "done": await io.run_task("publish", publish)}

    return approve


async def waiting(engine: Engine, run_id: str, key: str) -> bool:
    """The run is unloaded (WAITING) on the wait `key`."""
    run = await engine.get_run(run_id)
    tasks = {t["key"]: t["status"] for t in await engine.store.get_tasks(run_id)}
    return bool(run["status"] == "WAITING" and tasks.get(key) == "WAITING")


async def until_waiting(engine: Engine, run_ids: list[str], key: str = "review") -> None:
    for run_id in run_ids:
        deadline = asyncio.get_running_loop().time() + 60
        while not await waiting(engine, run_id, key):
            assert asyncio.get_running_loop().time() < deadline, f"{run_id} never waited"
            await asyncio.sleep(0.02)


async def test_an_event_wakes_each_matching_run_once_and_no_other(workers: list[Harness]) -> None:
    after: Counter[str] = Counter()
    approve = approval_job(after)
    for h in workers:
        await h.start(approve)
    engine = workers[0].engine
    ones = [await engine.trigger(approve.id, {"draft_id": 1}) for _ in range(3)]
    others = [await engine.trigger(approve.id, {"draft_id": d}) for d in (2, 1.5, "1")]
    await until_waiting(engine, ones + others)

    sent = await asyncio.gather(
        *(
            engine.send_event("draft.reviewed", {"draft_id": 1, "ok": True}, id="r-1")
            for _ in range(3)
        )
    )
    assert sorted(s.created for s in sent) == [False, False, True]
    (first,) = [s for s in sent if s.created]
    assert sorted(first.woke) == sorted(ones)
    for run_id in ones:
        run = await engine.wait_for(run_id, 60)
        assert run["status"] == "COMPLETED"
        assert run["output"] == {"review": {"draft_id": 1, "ok": True}, "done": "published"}
    # 1.0 would match 1 (equal as JSON numbers); 1.5, 2 and "1" do not.
    for run_id in others:
        assert await waiting(engine, run_id, "review")
    # An event of another name, or without the key, wakes nobody.
    assert (await engine.send_event("draft.created", {"draft_id": 2})).woke == []
    assert (await engine.send_event("draft.reviewed", {"id": 2})).woke == []
    assert after == Counter({run_id: 1 for run_id in ones})
    listed = await engine.events("draft.reviewed")
    assert [(e["id"], e["woke"]) for e in listed if e["id"] == "r-1"] == [("r-1", 3)]


async def test_an_event_sent_while_no_worker_runs_is_delivered_when_one_starts(
    workers: list[Harness],
) -> None:
    after: Counter[str] = Counter()
    approve = approval_job(after)
    h = workers[0]
    await h.start(approve)
    run_id = await h.engine.trigger(approve.id, {"draft_id": 7})
    await until_waiting(h.engine, [run_id])
    await h.stop()

    sent = await h.engine.send_event("draft.reviewed", {"draft_id": 7})
    assert sent.woke == [run_id]
    assert (await h.engine.get_run(run_id))["status"] == "WAITING"

    await workers[1].start(approve)
    run = await h.engine.wait_for(run_id, 60)
    assert run["output"]["review"] == {"draft_id": 7}
    assert after[run_id] == 1


async def test_a_wait_times_out_to_none_and_a_later_event_changes_nothing(
    workers: list[Harness],
) -> None:
    after: Counter[str] = Counter()
    approve = approval_job(after, timeout=0.3)
    h = workers[0]
    await h.start(approve)
    run_id = await h.engine.trigger(approve.id, {"draft_id": 9})
    run = await h.engine.wait_for(run_id, 60)
    assert run["output"] == {"review": None, "done": "published"}
    assert (await h.engine.send_event("draft.reviewed", {"draft_id": 9})).woke == []
    (task,) = [t for t in await h.store.get_tasks(run_id) if t["key"] == "review"]
    assert (task["status"], task["output"], task["kind"]) == ("COMPLETED", None, "event")


async def test_a_cancel_racing_a_delivery_ends_in_one_outcome(workers: list[Harness]) -> None:
    after: Counter[str] = Counter()
    approve = approval_job(after)
    for h in workers:
        await h.start(approve)
    engine = workers[0].engine
    run_ids = [await engine.trigger(approve.id, {"draft_id": n}) for n in range(12)]
    await until_waiting(engine, run_ids)

    async def cancel(run_id: str) -> str | None:
        try:
            return await workers[1].engine.cancel(run_id)
        except InvalidRunStateError:
            return None  # the run completed first

    results = await asyncio.gather(
        *(engine.send_event("draft.reviewed", {"draft_id": n}) for n in range(12)),
        *(cancel(run_id) for run_id in run_ids),
    )
    woken = {run_id for sent in results[:12] for run_id in sent.woke}  # type: ignore[union-attr]
    canceled = dict(zip(run_ids, results[12:], strict=True))
    for run_id in run_ids:
        run = await engine.wait_for(run_id, 60)
        tasks = {t["key"]: t["status"] for t in await engine.store.get_tasks(run_id)}
        if canceled[run_id] is None:  # the cancel was refused: the delivery won, run to the end
            assert run["status"] == "COMPLETED" and run_id in woken
            assert tasks == {"review": "COMPLETED", "publish": "COMPLETED"}
        else:
            assert run["status"] == "CANCELED"
            # Delivered first (then canceled), or canceled first (the event found no wait).
            assert tasks["review"] == ("COMPLETED" if run_id in woken else "CANCELED")
        assert after[run_id] <= 1


async def test_on_event_starts_one_run_per_event_per_job(workers: list[Harness]) -> None:
    name = unique_id("order.created")
    first: Any = None

    async def record(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    engine = workers[0].engine
    await engine.upgrade()
    # Sent before any worker registered a job for it: stored, starts nothing.
    early = await engine.send_event(name, {"order": 0})
    assert early.created and early.started == []

    one = job(id=unique_id("on-one"), on_event=name)(record)
    two = job(id=unique_id("on-two"), on_event=name)(record)
    for h in workers:
        await h.start(one, two)
    sends = [
        workers[n % 3].engine.send_event(name, {"order": n % 4}, id=f"o-{n % 4}") for n in range(12)
    ]
    sent = await asyncio.gather(*sends)
    assert sum(s.created for s in sent) == 4
    for job_ in (one, two):
        runs = await engine.list_runs(job_.id)
        assert len(runs) == 4
        assert sorted(r["payload"]["order"] for r in runs) == [0, 1, 2, 3]
        for run in runs:
            first = await engine.wait_for(run["id"], 60)
            assert first["status"] == "COMPLETED"


async def test_an_event_an_on_event_job_refuses_is_refused_whole(workers: list[Harness]) -> None:
    name = unique_id("invoice.paid")

    @job(id=unique_id("on-typed"), on_event=name)
    async def typed(payload: Order, io: IO, ctx: Context) -> Any:
        return payload.order

    await workers[0].start(typed)
    engine = workers[0].engine
    with pytest.raises(PayloadValidationError, match=f"event {name!r} starts job"):
        await engine.send_event(name, {"order": "not a number"}, id="refused")
    assert await engine.events(name) == []
    sent = await engine.send_event(name, {"order": 5}, id="refused")
    assert sent.created and len(sent.started) == 1
    assert (await engine.wait_for(sent.started[0], 60))["output"] == 5


def signal_job(after: Counter[str]) -> Job:
    @job(id=unique_id("signaled"))
    async def signaled(payload: Any, io: IO, ctx: Context) -> Any:
        first = await io.wait_for_signal("first", "go", timeout=timedelta(days=1))
        second = await io.wait_for_signal("second", "go")

        async def step(task: Task) -> None:
            after[ctx.run_id] += 1

        await io.run_task("after", step)
        return [first, second]

    return signaled


async def test_signals_go_to_one_run_and_are_kept_until_it_waits(workers: list[Harness]) -> None:
    after: Counter[str] = Counter()
    signaled = signal_job(after)
    h = workers[0]
    await h.start(signaled)
    engine = h.engine
    run_id = await engine.trigger(signaled.id)
    other = await engine.trigger(signaled.id)
    await until_waiting(engine, [run_id, other], "first")
    assert (await engine.signal(run_id, "go", {"n": 1})).woke
    await until_waiting(engine, [run_id], "second")
    assert (await engine.signal(run_id, "go", {"n": 2})).woke
    assert (await engine.wait_for(run_id, 60))["output"] == [{"n": 1}, {"n": 2}]
    assert await waiting(engine, other, "first")  # the other run heard nothing

    with pytest.raises(InvalidRunStateError, match="already COMPLETED"):
        await engine.signal(run_id, "go")
    with pytest.raises(RunNotFoundError, match="no run has id"):
        await engine.signal("nope", "go")

    # Sent before a wait: kept, and taken in order by the waits for that name.
    await h.stop()
    queued = await engine.trigger(signaled.id)
    a = await engine.signal(queued, "go", {"n": "a"})
    b = await engine.signal(queued, "go", {"n": "b"})
    assert (a.created, a.woke, b.created, b.woke) == (True, False, True, False)
    assert a.id != b.id  # without an id, each signal gets a fresh one
    await workers[1].start(signaled)
    assert (await engine.wait_for(queued, 60))["output"] == [{"n": "a"}, {"n": "b"}]
    assert after[queued] == 1


async def test_a_signal_id_is_sent_once_per_run(workers: list[Harness]) -> None:
    """Three senders race one id to one run: one signal is kept, the others are reported as
    duplicates; the id is still a duplicate once the run has ended, and free for other runs."""
    after: Counter[str] = Counter()
    signaled = signal_job(after)
    engine = workers[0].engine
    await engine.upgrade()
    await register(engine.store, [signaled])
    run_id = await engine.trigger(signaled.id)
    other = await engine.trigger(signaled.id)
    sends = [h.engine.signal(run_id, "go", {"n": n}, id="approve-1") for n, h in enumerate(workers)]
    sent = await asyncio.gather(*sends)
    assert sorted(s.created for s in sent) == [False, False, True]
    assert {s.id for s in sent} == {"approve-1"} and not any(s.woke for s in sent)
    (kept,) = [s for s in sent if s.created]
    assert (await engine.signal(other, "go", {"n": "other"}, id="approve-1")).created
    assert (await engine.signal(run_id, "go", {"n": "second"}, id="approve-2")).created
    await workers[1].start(signaled)
    done = await engine.wait_for(run_id, 60)
    assert done["output"] == [{"n": sent.index(kept)}, {"n": "second"}]
    assert after[run_id] == 1
    # After the end: a known id is still a duplicate (not an error); a new one is refused.
    again = await engine.signal(run_id, "go", id="approve-2")
    assert (again.created, again.woke) == (False, False)
    with pytest.raises(InvalidRunStateError, match="already COMPLETED"):
        await engine.signal(run_id, "go", id="approve-3")
    with pytest.raises(EngineError, match="signal id"):
        await engine.signal(other, "go", id="x" * 301)
    assert await signal_rows(engine, run_id) == 2


async def signal_rows(engine: Engine, run_id: str) -> int:
    async with engine.store.begin() as conn:
        query = text("SELECT count(*) FROM engine_signals WHERE run_id = :id")
        return int((await conn.execute(query, {"id": run_id})).scalar_one())


@pytest.mark.postgres
async def test_sends_without_an_id_survive_a_lost_commit_answer(pg_head_url: str) -> None:
    """The connection drops as the commit's answer comes back (the event, then a signal, is
    stored): the send retries under the id and token it fixed before its first try, delivers
    nothing twice, and answers what the committed try did, not "sent before"."""
    after: Counter[str] = Counter()
    approve = approval_job(after)
    name = unique_id("draft.created")

    @job(id=unique_id("on-draft"), on_event="draft.reviewed")
    async def on_review(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    signaled = signal_job(after)
    worker = Harness(pg_head_url)
    with TcpProxy("127.0.0.1", 5432) as proxy:
        sender = Engine(with_port(pg_head_url, proxy.port), pool_size=2)
        try:
            await worker.start(approve, on_review, signaled)
            run_id = await sender.trigger(approve.id, {"draft_id": 9})
            waiter = await sender.trigger(signaled.id)
            await until_waiting(worker.engine, [run_id])
            await until_waiting(worker.engine, [waiter], "first")

            proxy.cut_after_commit(b"INSERT INTO engine_events")
            sent = await sender.send_event("draft.reviewed", {"draft_id": 9, "by": name})
            assert proxy.commits_cut == 1
            assert sent.created and sent.woke == [run_id] and len(sent.started) == 1
            assert (await worker.engine.wait_for(run_id, 60))["status"] == "COMPLETED"
            assert after[run_id] == 1
            listed = await worker.engine.events("draft.reviewed")
            assert [(e["id"], e["woke"], e["started"]) for e in listed] == [(sent.id, 1, 1)]
            assert [r["id"] for r in await worker.engine.list_runs(on_review.id)] == sent.started

            proxy.cut_after_commit(b"INSERT INTO engine_signals")
            signal = await sender.signal(waiter, "go", {"n": 1})
            assert proxy.commits_cut == 2
            assert (signal.created, signal.woke) == (True, True)
            await until_waiting(worker.engine, [waiter], "second")
            assert await signal_rows(worker.engine, waiter) == 1
        finally:
            await sender.close()
            await worker.close()


@pytest.mark.postgres
async def test_a_send_outlasts_lost_connections_and_delivers_once(pg_head_url: str) -> None:
    """The sender's connections are cut and new ones refused for a while: the send retries
    (the event's id is fixed before the first try) and the run is woken once."""
    after: Counter[str] = Counter()
    approve = approval_job(after)
    worker = Harness(pg_head_url)
    with TcpProxy("127.0.0.1", 5432) as proxy:
        sender = Engine(with_port(pg_head_url, proxy.port), pool_size=2)
        try:
            await worker.start(approve)
            run_id = await sender.trigger(approve.id, {"draft_id": 3})
            await until_waiting(worker.engine, [run_id])
            proxy.refuse(1.0)
            assert proxy.cut() >= 1  # the sender's pooled connection, mid-idle
            sent = await sender.send_event("draft.reviewed", {"draft_id": 3}, id="through-cuts")
            assert sent.created and sent.woke == [run_id]
            assert (await worker.engine.wait_for(run_id, 60))["status"] == "COMPLETED"
            assert after[run_id] == 1
            listed = await worker.engine.events("draft.reviewed")
            assert [(e["id"], e["woke"]) for e in listed] == [("through-cuts", 1)]
        finally:
            await sender.close()
            await worker.close()
