"""Three `engine run` processes serve one scheduled job: each tick gives one run, executed
once, whichever worker fires it (issue 8), on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, text

from engine import Engine
from engine.schema import UTCDateTime

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _make_due(url: str, since: datetime) -> None:
    """Moves the schedule's next tick back to `since`, as if no worker had run since then."""

    async def update() -> None:
        async with Engine(url) as engine, engine.store.begin() as conn:
            statement = text(
                "UPDATE engine_schedules SET next_fire_at = :due_at WHERE job_id = 'ticking'"
            ).bindparams(bindparam("due_at", type_=UTCDateTime))
            await conn.execute(statement, {"due_at": since})

    asyncio.run(update())


def _runs(url: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        async with Engine(url) as engine:
            return await engine.list_runs("ticking", None, 1000)

    return asyncio.run(read())


def _iso(year: int) -> str:
    return datetime(year, 1, 1, tzinfo=UTC).isoformat(timespec="microseconds")


def test_three_workers_fire_each_tick_once(
    procs: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "ticks.log"
    monkeypatch.setenv("TICKING_LOG", str(log))
    workers = [procs.worker("ticking.py", db_url, ready=False) for _ in range(3)]
    for worker in workers:
        worker.wait_ready()
    year = datetime.now(UTC).year
    expected: list[str] = []
    # Twice: ticks of 1 January two years back to this year are due at once for all three
    # (missed="all"), then from five years back, which overlaps the first round's ticks.
    for since in (year - 2, year - 5):
        _make_due(db_url, datetime(since, 1, 1, tzinfo=UTC))
        expected = [_iso(y) for y in range(since, year + 1)]

        def done(count: int = len(expected)) -> bool:
            runs = _runs(db_url)
            return len(runs) >= count and all(r["status"] == "COMPLETED" for r in runs)

        procs.wait_until(done, 90, f"{len(expected)} tick runs completed")

    runs = _runs(db_url)
    assert sorted(r["payload"]["scheduled_at"] for r in runs) == expected, runs
    # Each tick's step ran once, in one of the three workers, and saw its tick in ctx too.
    lines = [line.split() for line in procs.lines(log)]
    assert Counter(tick for tick, _, _ in lines) == Counter(expected), lines
    assert all(tick == seen for tick, seen, _ in lines), lines
    assert {int(pid) for _, _, pid in lines} <= {w.pid for w in workers}
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(30) == 0, worker.output
