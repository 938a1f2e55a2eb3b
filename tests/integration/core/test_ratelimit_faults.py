"""The rate limiter under real faults: its reservation while PostgreSQL is unreachable (a TCP
proxy that cuts every connection and refuses new ones), and a cancel reaching a run that waits
for a place. Each ends in one recorded outcome; nothing is mocked."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faults import TcpProxy, with_port
from ratelimited import a_run_waiting_for_a_place
from sqlalchemy import text
from support import Harness, unique_id

from engine import RateLimit, job, rate_limits

pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5432) as p:
        yield p


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.mark.postgres
async def test_a_reservation_during_an_outage_stops_the_execution_and_the_run_goes_on(
    pg_head_url: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="engine")
    name = unique_id("outage-api")
    rate_limits({name: RateLimit(requests=5, per="second")})
    release = asyncio.Event()
    calls: list[int] = []

    @job(id=unique_id("reserve-in-outage"))
    async def limited(payload: Any, io: Any, ctx: Any) -> int:
        await release.wait()  # in memory, before its reservation, while the database goes away

        async def call(task: Any) -> int:
            calls.append(task.attempt)
            return 1

        return int(await io.run_task("call", call, rate_limit=name))

    h = Harness(with_port(pg_head_url, proxy.port))
    try:
        await h.start(limited, lease_seconds=2)
        run_id = await h.engine.trigger(limited.id, {})

        async def running() -> bool:
            return bool((await h.engine.get_run(run_id))["status"] == "RUNNING")

        await until(running, 30, "the run started")
        proxy.refuse()
        proxy.cut()
        release.set()  # the reservation meets the outage

        def stopped() -> list[str]:
            messages = [r.getMessage() for r in caplog.records]
            return [m for m in messages if "reserving a rate-limit place" in m]

        # Held until the reservation itself has failed (on its cut connection, or a refused
        # one): a refused connection alone may be the worker's heartbeat's, before it. Once, in
        # a full suite, that took more than 30 s (SQLAlchemy's pool checkout timeout, likely):
        # the deadline is generous.
        await until(lambda: _true(bool(stopped())), 75, "the reservation's failure")
        assert calls == []  # nothing was sent without a place
        proxy.accept()
        # The execution stopped; the run is taken up again once its lease lapses, reserves
        # then, and its call runs once.
        await h.engine.wait_for(run_id, 60)
        view = await h.engine.show_run(run_id)
        assert view["status"] == "COMPLETED" and view["output"] == 1, view
        assert calls == [1]
        assert "resumes once its lease lapses" in stopped()[0], stopped()
        (task,) = view["tasks"]
        assert (task["status"], task["attempts"]) == ("COMPLETED", 1), task
    finally:
        await h.close()


async def _true(value: bool) -> bool:
    return value


async def test_a_cancel_reaching_a_run_waiting_for_a_place_ends_it_once(harness: Harness) -> None:
    setup = await a_run_waiting_for_a_place(harness, "cancel-limited")
    engine, first, second, calls = harness.engine, setup.first, setup.second, setup.calls
    # The cancel and the scheduler's resume race for the row: the hour is moved to now in
    # the same breath, so the scheduler wants to resume the run as the cancel arrives.
    async with harness.store.begin() as conn:
        await conn.execute(
            text("UPDATE engine_runs SET wake_at = CURRENT_TIMESTAMP WHERE id = :id"),
            {"id": second},
        )
    harness.store._wake_local()
    await engine.cancel(second)
    view = await engine.wait_for(second, 30)
    # One outcome, recorded once: canceled. The call went at most once (the resume may have
    # won the race to it), and nothing of the run is left waiting.
    assert view["status"] == "CANCELED", view
    assert calls.count(second) <= 1 and calls[0] == first, calls
    shown = await engine.show_run(second)
    assert shown["waiting_for"] is None, shown
    assert all(t["status"] != "WAITING" for t in shown["tasks"]), shown["tasks"]
