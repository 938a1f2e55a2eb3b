"""Flow control in the store and the engine: limited claims, priority order, `waiting_for`.

Claims are made directly through `Store.claim_runs`, several stores at once, on SQLite and on
PostgreSQL: what each returns is what a worker would execute.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import Harness, unique_id

from engine import Concurrency, Engine, EngineError, RetryPolicy, clock, job
from engine.records import Registration
from engine.store import Store


async def _queue(engine: Engine, n: int, key: str | None, limit: int = 2, **kw: Any) -> list[str]:
    concurrency = None if key is None else (key, limit)
    return [
        (await engine.store.create_run("j", "1", {}, None, concurrency=concurrency, **kw))[0]
        for _ in range(n)
    ]


async def _setup(url: str) -> Engine:
    engine = Engine(url)
    await engine.upgrade()
    await engine.store.register_jobs([Registration("j", "1", None, 0, {"limit": 2, "key": None})])
    return engine


async def test_concurrent_claims_never_exceed_a_limit(db_url: str) -> None:
    engine = await _setup(db_url)
    stores = [Store(db_url) for _ in range(4)]
    try:
        await _queue(engine, 10, "", limit=3)
        claims = await asyncio.gather(
            *(s.claim_runs(f"w{i}", 10, 30, ["j@1"], limited=["j"]) for i, s in enumerate(stores))
        )
        claimed = [c for batch in claims for c in batch]
        assert len(claimed) == 3, claims
        # None more while the three run; one ending frees one slot, one suspending another.
        assert await stores[0].claim_runs("w0", 10, 30, ["j@1"], limited=["j"]) == []
        first, second = claimed[0], claimed[1]
        assert await engine.store.finish_run(first.id, first.epoch, "COMPLETED", output=1)
        assert await engine.store.suspend_run(second.id, second.epoch, clock.now() + 3600)
        again = await stores[1].claim_runs("w1", 10, 30, ["j@1"], limited=["j"])
        assert len(again) == 2
        assert await stores[2].claim_runs("w2", 10, 30, ["j@1"], limited=["j"]) == []
    finally:
        for s in stores:
            await s.close()
        await engine.close()


async def test_a_crowded_key_does_not_hide_other_keys(db_url: str) -> None:
    engine = await _setup(db_url)
    try:
        crowded = await _queue(engine, 40, "a", limit=1)
        other = await _queue(engine, 1, "b", limit=1)
        plain = await _queue(engine, 1, None)
        (first,) = await engine.store.claim_runs("w", 1, 30, ["j@1"], limited=["j"])
        assert first.id == crowded[0]
        # 39 runs of key "a" come first, but "a" is full: "b" and the unlimited run go.
        got = await engine.store.claim_runs("w", 5, 30, ["j@1"], limited=["j"])
        assert sorted(c.id for c in got) == sorted(other + plain)
    finally:
        await engine.close()


async def test_a_lost_run_holds_no_slot_and_is_recovered(db_url: str) -> None:
    engine = await _setup(db_url)
    try:
        (lost_id,) = await _queue(engine, 1, "", limit=1)
        (waiting_id,) = await _queue(engine, 1, "", limit=1)
        (first,) = await engine.store.claim_runs("w1", 5, 1, ["j@1"], limited=["j"])
        assert first.id == lost_id
        clock.advance(5)  # its lease lapsed: worker w1 is gone
        (again,) = await engine.store.claim_runs("w2", 5, 30, ["j@1"], limited=["j"])
        assert again.id == lost_id and again.epoch == first.epoch + 1
        assert (await engine.get_run(waiting_id))["status"] == "QUEUED"
    finally:
        await engine.close()


async def test_claims_take_higher_priority_first_then_trigger_time(db_url: str) -> None:
    engine = await _setup(db_url)
    try:
        ids = {}
        for name, priority in [("a", 0), ("b", 3), ("c", -1), ("d", 3), ("e", 7)]:
            ids[name] = (await _queue(engine, 1, None, priority=priority))[0]
        order = []
        for _ in ids:
            (c,) = await engine.store.claim_runs("w", 1, 30, ["j@1"])
            order.append(c.id)
        names = {v: k for k, v in ids.items()}
        assert [names[i] for i in order] == ["e", "b", "d", "a", "c"]
    finally:
        await engine.close()


async def test_starvation_is_bounded_a_minute_per_priority_level(db_url: str) -> None:
    engine = await _setup(db_url)
    try:
        (old,) = await _queue(engine, 1, None, priority=0)
        clock.advance(2 * 60 + 1)  # more than 2 levels' worth of waiting
        (newer,) = await _queue(engine, 1, None, priority=2)
        (first,) = await engine.store.claim_runs("w", 1, 30, ["j@1"])
        assert first.id == old
        (high,) = await _queue(engine, 1, None, priority=5)
        (second,) = await engine.store.claim_runs("w", 1, 30, ["j@1"])
        assert second.id == high
        assert newer
    finally:
        await engine.close()


async def test_waiting_for_says_wait_retry_and_rate_limit(harness: Harness) -> None:
    @job(id=unique_id("waits"))
    async def waits(payload: Any, io: Any, ctx: Any) -> str:
        async def fail(task: Any) -> str:
            if payload["kind"] == "429":
                raise EngineError("slow down", status_code=429)
            raise ValueError("flaky")

        if payload["kind"] == "wait":
            await io.wait("cool-down", 3600)
        else:
            await io.run_task("call", fail, retry=RetryPolicy(max_attempts=3, min_delay=600,
                                                              max_delay=600))  # fmt: skip
        return "done"

    await harness.start(waits)
    engine = harness.engine
    found = {}
    for kind in ("wait", "retry", "429"):
        run_id = await engine.trigger(waits.id, {"kind": kind})
        for _ in range(500):
            if (await engine.get_run(run_id))["status"] == "WAITING":
                break
            await asyncio.sleep(0.02)
        found[kind] = (await engine.show_run(run_id))["waiting_for"]
    assert found["wait"]["reason"] == "wait" and found["wait"]["task"] == "cool-down"
    assert found["wait"]["summary"].startswith("wait 'cool-down' until ")
    assert (found["retry"]["reason"], found["retry"]["task"], found["retry"]["attempt"]) == (
        "retry", "call", 1,
    )  # fmt: skip
    assert found["retry"]["error"] == "ValueError: flaky"
    assert found["429"]["reason"] == "rate_limit"
    assert found["429"]["summary"].startswith("rate limit until ")
    listed = {r["id"]: r["waiting_for"] for r in await engine.list_runs(waits.id)}
    assert sorted(w["reason"] for w in listed.values()) == ["rate_limit", "retry", "wait"]


def test_bad_flow_options_are_refused_at_the_decorator() -> None:
    async def fn(payload: Any, io: Any, ctx: Any) -> None:
        return None

    with pytest.raises(EngineError, match=r"\) concurrency=0: use 1 to 100000"):
        job(id=unique_id("bad"), concurrency=0)(fn)
    with pytest.raises(EngineError, match="give a number of runs"):
        job(id=unique_id("bad"), concurrency="5")(fn)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match=r"\) priority=101: use -100 to 100"):
        job(id=unique_id("bad"), priority=101)(fn)
    with pytest.raises(EngineError, match="Concurrency\\(key=3\\)"):
        Concurrency(limit=1, key=3)  # type: ignore[arg-type]


async def test_a_resumed_run_needs_a_slot_again(db_url: str) -> None:
    engine = await _setup(db_url)
    try:
        a, b = await _queue(engine, 2, "k", limit=1)
        (first,) = await engine.store.claim_runs("w", 5, 30, ["j@1"], limited=["j"])
        assert first.id == a
        due = clock.now() + 1
        assert await engine.store.suspend_run(a, first.epoch, due)
        (second,) = await engine.store.claim_runs("w", 5, 30, ["j@1"], limited=["j"])
        assert second.id == b  # the suspended run gave its slot back
        clock.advance(2)  # `a` is due, but `b` holds the one slot
        assert await engine.store.claim_runs("w", 5, 30, ["j@1"], limited=["j"]) == []
        view = await engine.show_run(a)
        assert view["status"] == "WAITING"
        assert view["waiting_for"]["reason"] == "concurrency", view["waiting_for"]
        # A worker does not count the blocked wake-up as due work (it would spin on it).
        now = clock.now()
        assert (await engine.store.next_due(["j@1"], ["http"]) or now) < now
        later = await engine.store.next_due(["j@1"], ["http"], after=now)
        assert later is not None and later > now  # only b's lease expiry is left
        assert await engine.store.finish_run(b, second.epoch, "COMPLETED", output=1)
        (third,) = await engine.store.claim_runs("w", 5, 30, ["j@1"], limited=["j"])
        assert third.id == a and third.attempt == first.attempt
    finally:
        await engine.close()
