"""The dashboard while its database is away: PostgreSQL behind a TCP proxy that cuts every
connection and refuses new ones. Pages and actions answer one clear 503 page (no traceback),
nothing is half-written, the live stream keeps going and picks up again once the database is
back (saying so, for the page's banner), and the actions work again."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from faults import TcpProxy, with_port
from support import Harness, unique_id

from engine import RetryPolicy, job
from engine.ui import create_app

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(120)]


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5432) as p:
        yield p


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Polls the async `check` until it is true; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_pages_actions_and_streams_ride_out_a_lost_database(
    pg_head_url: str, proxy: TcpProxy
) -> None:
    @job(id=unique_id("ui-sleeps"))
    async def sleeps(payload: Any, io: Any, ctx: Any) -> None:
        await io.wait("long", 3600)

    @job(id=unique_id("ui-fails"))
    async def fails(payload: Any, io: Any, ctx: Any) -> None:
        async def boom(task: Any) -> None:
            raise ValueError("boom")

        await io.run_task("boom", boom, retry=RetryPolicy(max_attempts=1))

    h = Harness(pg_head_url)  # the worker and the checks go straight to the database
    try:
        await h.start(sleeps, fails)
        asleep = await h.engine.trigger(sleeps.id)
        failed = (await h.run(fails))["id"]

        async def waiting() -> bool:
            return bool((await h.engine.get_run(asleep))["status"] == "WAITING")

        await until(waiting, "the sleeping run to wait")
        await h.stop()

        async def count_runs() -> int:
            return len(await h.engine.list_runs())

        before = await count_runs()
        app = create_app(with_port(pg_head_url, proxy.port), poll_seconds=0.05, stream_seconds=8.0)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1:8008"
            ) as http:
                page = (await http.get(f"/runs/{asleep}")).text
                found = re.search(r'name="csrf-token" content="([^"]+)"', page)
                assert found, page
                form = {"csrf": found.group(1)}

                proxy.refuse()
                proxy.cut()
                answers = [
                    await http.post(f"/runs/{asleep}/cancel", data=form),
                    await http.post(f"/runs/{failed}/retry", data=form),
                    await http.post("/trigger", data={**form, "job": sleeps.id}),
                    await http.get("/"),
                    await http.get(f"/runs/{asleep}"),
                ]
                for answer in answers:
                    assert answer.status_code == 503, answer.text
                    assert "Database unavailable" in answer.text
                    assert "Traceback" not in answer.text
                assert "took effect whole or not at all" in answers[0].text
                # Nothing was written: the runs are as they were, no run was created.
                assert (await h.engine.get_run(asleep))["status"] == "WAITING"
                assert (await h.engine.get_run(failed))["status"] == "FAILED"
                assert await count_runs() == before

                # Live streams opened during the outage say so once (the page shows a banner),
                # keep going, and say when the database is back (the banner goes).
                streams = [
                    asyncio.create_task(http.get("/events/runs")),
                    asyncio.create_task(http.get(f"/events/runs/{asleep}", params={"since": "x"})),
                ]
                tries = proxy.refused + 6

                async def tried() -> bool:
                    return proxy.refused >= tries

                await until(tried, "the streams trying the database")
                proxy.accept()
                runs_events, run_events = [(await stream).text for stream in streams]
                for events in (runs_events, run_events):
                    assert "Traceback" not in events
                    assert events.count("event: outage") == 1, events
                    assert events.count("event: recovered") == 1, events
                    assert events.index("event: outage") < events.index("event: recovered")
                    assert '"reason": "database postgresql' in events
                row = runs_events.index(f'"id": "{asleep}", "status": "WAITING"')
                assert runs_events.index("event: recovered") < row
                assert run_events.index("event: recovered") < run_events.index("event: changed")

                # Back: the actions work again.
                done = await http.post(f"/runs/{asleep}/cancel", data=form)
                assert done.status_code == 303, done.text
                assert (await h.engine.get_run(asleep))["status"] == "CANCELED"
    finally:
        await h.close()
