"""The scheduler rides out a database outage in process: PostgreSQL through a TCP proxy that cuts
every connection and refuses new ones until the test lets them through. The scheduler does not
die, reports the outage once at its start and once at its end, and the run in flight finishes
with every step executed once. (tests/acceptance/test_outages.py does the same with real
`engine run` processes, a restarted cluster, terminated backends and a locked SQLite file.)"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faults import TcpProxy, with_port
from support import Harness, unique_id

from engine import job

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(90)]

UNAVAILABLE = "database unavailable: "
REACHABLE = "database reachable again after "


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5432) as p:
        yield p


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def wait_for(check: Any, timeout: float, what: str) -> None:
    """Polls `check` (a condition another task or thread makes true) with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_scheduler_survives_cut_and_refused_connections(
    pg_head_url: str, proxy: TcpProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="engine")
    calls: list[str] = []
    release = asyncio.Event()

    @job(id=unique_id("outage"))
    async def outage_job(payload: Any, io: Any, ctx: Any) -> list[str]:
        async def first(task: Any) -> str:
            calls.append("first")
            return "a"

        async def held(task: Any) -> str:
            calls.append("held")
            await release.wait()  # in flight while the database goes away
            return "b"

        return [await io.run_task("first", first), await io.run_task("held", held)]

    h = Harness(with_port(pg_head_url, proxy.port))
    try:
        scheduler = await h.start(outage_job, lease_seconds=30)
        task = h.schedulers[0][1]
        run_id = await h.engine.trigger(outage_job.id, None)
        await wait_for(lambda: calls == ["first", "held"], 30, "the held step running")

        proxy.refuse()
        proxy.cut()
        scheduler.wake.set()  # the claim loop looks now, and finds the database gone
        await wait_for(lambda: lines(caplog, UNAVAILABLE), 30, "the outage reported")
        tries = proxy.refused + 3
        await wait_for(lambda: proxy.refused >= tries, 30, "reconnection attempts")
        assert not task.done(), task
        proxy.accept()
        release.set()  # the step's write meets the database as it comes back
        await wait_for(lambda: lines(caplog, REACHABLE), 30, "the end of the outage reported")

        await h.engine.wait_for(run_id, 60)
        view = await h.engine.show_run(run_id)
        assert view["status"] == "COMPLETED", view
        assert view["output"] == ["a", "b"]
        assert calls == ["first", "held"]  # nothing executed twice
        assert not task.done(), task
        assert len(lines(caplog, UNAVAILABLE)) == 1, caplog.text
        assert len(lines(caplog, REACHABLE)) == 1, caplog.text
    finally:
        release.set()
        await h.close()
