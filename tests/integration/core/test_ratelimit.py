"""The shared rate limiter (engine.ratelimit) in process, on SQLite and on PostgreSQL.

Reservations are made through several stores at once, as several workers would make them; jobs
run in an in-process scheduler. What is asserted is what the database holds: the places the
limiter gave, the task rows of a run it suspended, and `waiting_for`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest
from ratelimited import a_run_waiting_for_a_place
from sqlalchemy import text
from support import Harness, unique_id

from engine import EngineError, RateLimit, job, rate_limits
from engine.ratelimit import WAIT_TYPE, Charge, reserve, take_place
from engine.store import Store
from integrations.openai.limits import charge_for, estimate_tokens, settle


async def _upgraded(url: str) -> Store:
    store = Store(url)
    from engine import migrate

    await migrate.upgrade(store)
    return store


async def test_concurrent_reservations_take_distinct_paced_places(db_url: str) -> None:
    first = await _upgraded(db_url)
    stores = [first, *(Store(db_url) for _ in range(2))]
    limit = RateLimit(requests=10, per="second", headroom=0)
    name = unique_id("api")
    try:
        before = time.time()
        places = await asyncio.gather(*(reserve(stores[i % 3], name, limit, 0) for i in range(30)))
        ordered = sorted(places)
        # Thirty workers' calls at once: thirty different places, at least 0.1 s apart (more
        # where a worker's statement came when the limit had room again).
        gaps = [b - a for a, b in itertools.pairwise(ordered)]
        assert all(g > 0.1 - 1e-6 for g in gaps), gaps
        assert before - 0.002 <= ordered[0] <= time.time() + 0.002
        # In any one-second window, at most ten places.
        assert max(sum(1 for p in ordered if s <= p < s + 1 - 1e-6) for s in ordered) == 10
    finally:
        for s in stores:
            await s.close()


async def test_a_high_limit_is_reserved_in_batches_and_still_paced(db_url: str) -> None:
    store = await _upgraded(db_url)
    other = Store(db_url)
    limit = RateLimit(requests=1000, per="second", headroom=0)  # batches of 50 places, 1 ms apart
    name = unique_id("batched")
    try:
        mine = [await take_place(store, name, limit, 0) for _ in range(60)]
        # Another worker (another process: its own batches) reserves directly.
        theirs = await reserve(other, name, limit, 0)
        # One reservation for the first 50, one for the next 50 (10 of them still unused);
        # the other worker's place comes after both batches.
        assert all(abs(b - a - 0.001) < 1e-6 for a, b in itertools.pairwise(mine)), mine
        assert theirs >= mine[0] + 0.1 - 1e-6
        async with store.begin() as conn:
            (tat,) = (
                await conn.execute(
                    text("SELECT requests_tat FROM engine_rate_limits WHERE name = :n"),
                    {"n": name},
                )
            ).one()
        assert float(tat) >= mine[0] + 0.101 - 1e-6  # two batches, then theirs
    finally:
        await other.close()
        await store.close()


async def test_tokens_take_their_share_and_a_correction_moves_the_next_place(
    db_url: str,
) -> None:
    store = await _upgraded(db_url)
    limit = RateLimit(tokens=600, per="minute", headroom=0)  # 0.1 s per token
    name = unique_id("tokens")
    try:
        start = await reserve(store, name, limit, 30)
        # The estimate (30 tokens) holds the next place 3 s later ...
        assert abs(await reserve(store, name, limit, 0) - (start + 3.0)) < 1e-6
        # ... the call spent 10 fewer: the next place comes 1 s sooner.
        charge = Charge(name, limit, 30, store)
        await charge.settle(20)
        assert abs(await reserve(store, name, limit, 0) - (start + 2.0)) < 1e-6
        # OpenAI says its own limit is used up for 60 s: nothing goes before.
        await charge.settle(None, requests_wait=60)
        assert await reserve(store, name, limit, 0) >= time.time() + 59
    finally:
        await store.close()


async def test_a_run_over_its_limit_is_suspended_then_finishes(harness: Harness) -> None:
    setup = await a_run_waiting_for_a_place(harness, "limited")
    engine, first, second = harness.engine, setup.first, setup.second
    name, calls = setup.limit, setup.calls
    view = await engine.show_run(second)
    waiting = view["waiting_for"]
    assert waiting is not None, (view.get("error"), view.get("tasks"))
    assert waiting["reason"] == "rate_limit" and waiting["rate_limit"] == name, waiting
    assert waiting["summary"].startswith(f"rate limit {name} until "), waiting
    (task,) = view["tasks"]
    # A wait for the limit is not an attempt.
    assert (task["status"], task["attempts"]) == ("WAITING", 0), task
    assert calls == [first]
    # The hour passes: the run goes on with the place it reserved, and runs its call once.
    async with harness.store.begin() as conn:
        from sqlalchemy import text

        # The wait is in its own column; `error` holds errors only.
        error, wait = (
            await conn.execute(
                text("SELECT error, rate_limit_wait FROM engine_tasks WHERE run_id = :id"),
                {"id": second},
            )
        ).one()
        wait = json.loads(wait) if isinstance(wait, str) else wait
        assert error is None and wait["rate_limit"] == name, (error, wait)
        assert wait["at"] >= time.time() + 3000, wait
        await conn.execute(
            text("UPDATE engine_tasks SET due_at = :now WHERE run_id = :id"),
            {"now": _utc_now(), "id": second},
        )
        await conn.execute(
            text("UPDATE engine_runs SET wake_at = :now WHERE id = :id"),
            {"now": _utc_now(), "id": second},
        )
    harness.store._wake_local()
    await engine.wait_for(second, 60)
    done = await engine.show_run(second)
    assert done["status"] == "COMPLETED" and done["output"] == 1, done
    assert calls == [first, second]


def _utc_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


async def test_an_undeclared_limit_is_refused_clearly(harness: Harness) -> None:
    @job(id=unique_id("undeclared"))
    async def undeclared(payload: Any, io: Any, ctx: Any) -> None:
        async def call(task: Any) -> None:
            return None

        await io.run_task("call", call, rate_limit="nowhere-api")

    await harness.start(undeclared)
    view = await harness.run(undeclared, {})
    assert view["status"] == "FAILED"
    message = view["error"]["message"]
    assert "no rate limit named 'nowhere-api'" in message and "engine.rate_limits" in message


def test_bad_limits_are_refused_where_they_are_declared() -> None:
    with pytest.raises(EngineError, match="per='week'"):
        RateLimit(requests=1, per="week")
    with pytest.raises(EngineError, match="give requests=, tokens= or both"):
        RateLimit(per="minute")
    with pytest.raises(EngineError, match=r"requests=0\)"):
        RateLimit(requests=0)
    with pytest.raises(EngineError, match=r"headroom=0\.9\): give a share"):
        RateLimit(requests=1, headroom=0.9)
    with pytest.raises(EngineError, match=r"give an engine\.RateLimit"):
        rate_limits({"x": 5})  # type: ignore[dict-item]
    from integrations.openai import OpenAI

    with pytest.raises(EngineError, match="OpenAI\\(limits="):
        OpenAI(limits={"gpt-4o": 500})  # type: ignore[dict-item]


def test_openai_calls_are_charged_per_model_with_an_estimate() -> None:
    per_model = {"gpt-4o": RateLimit(requests=5), "*": RateLimit(tokens=1000, per="minute")}
    params = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 40}],
              "max_tokens": 50}  # fmt: skip
    assert estimate_tokens(params) == 10 + 50
    charge = charge_for("openai", per_model, params)
    assert charge is not None and (charge.name, charge.tokens) == ("openai:openai:gpt-4o-mini", 60)
    exact = charge_for("openai", per_model, {**params, "model": "gpt-4o"})
    assert exact is not None and (exact.name, exact.tokens) == ("openai:openai:gpt-4o", 0)
    assert charge_for("openai", {"gpt-4o": RateLimit(requests=5)}, params) is None
    shared = charge_for("oa", RateLimit(requests=5), params)
    assert shared is not None and shared.name == "openai:oa"


async def test_headers_saying_openai_is_exhausted_hold_the_next_place(db_url: str) -> None:
    store = await _upgraded(db_url)
    limit = RateLimit(requests=100, per="second", headroom=0)
    name = unique_id("headers")
    try:
        charge = Charge(name, limit, 0, store)
        await reserve(store, name, limit, 0)
        await settle(charge, None, {"x-ratelimit-remaining-requests": "0",
                                    "x-ratelimit-reset-requests": "6m0s"}, {})  # fmt: skip
        assert await reserve(store, name, limit, 0) >= time.time() + 359
        # Headers with room left change nothing.
        other = unique_id("headers")
        charge = Charge(other, limit, 0, store)
        at = await reserve(store, other, limit, 0)
        await settle(charge, None, {"x-ratelimit-remaining-requests": "5",
                                    "x-ratelimit-reset-requests": "6m0s"}, {})  # fmt: skip
        assert at + 0.01 - 1e-6 <= await reserve(store, other, limit, 0) < time.time() + 1
    finally:
        await store.close()


def test_a_limiter_wait_is_read_from_its_column_and_from_old_rows() -> None:
    from datetime import UTC, datetime

    from engine.waiting import waiting_for

    due = datetime(2099, 11, 30, 14, 6, tzinfo=UTC)
    place = due.timestamp() + 2  # the row is due a little before its place
    task: dict[str, Any] = {"key": "call", "due_at": due, "attempts": 0, "error": None,
                            "rate_limit_wait": {"rate_limit": "crm-api", "at": place}}  # fmt: skip
    found = waiting_for({"status": "WAITING", "wake_at": due}, [task], {}, datetime.now(UTC))
    assert found is not None
    assert found["summary"] == "rate limit crm-api until 2099-11-30 14:06:02 (task 'call')"
    assert found["rate_limit"] == "crm-api" and found["until"].startswith("2099-11-30T14:06:02")
    # A row written before migration 0012 kept the wait in `error`: read the same.
    old = {**task, "rate_limit_wait": None,
           "error": {"type": WAIT_TYPE, "rate_limit": "crm-api", "at": place}}  # fmt: skip
    assert waiting_for({"status": "WAITING", "wake_at": due}, [old], {}, datetime.now(UTC)) == found


async def test_places_leave_the_limits_headroom_unused(db_url: str) -> None:
    # 600 a minute with the default 2 % headroom: one place every 0.1 / 0.98 s, so that a
    # fleet's requests that reach the provider bunched still fit in each minute it counts.
    store = await _upgraded(db_url)
    limit = RateLimit(requests=600, per="minute")
    name = unique_id("headroom")
    try:
        places = [await reserve(store, name, limit, 0) for _ in range(3)]
        for a, b in itertools.pairwise(places):
            assert abs(b - a - 0.1 / 0.98) < 1e-6, places
        assert RateLimit(requests=600, per="minute", headroom=0).request_interval == 0.1
    finally:
        await store.close()
