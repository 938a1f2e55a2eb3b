"""Cron schedules: a tick gives one run across workers; missed ticks follow the job's policy;
pause and resume. Time is moved with engine.clock, never waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any

import pytest
from faults import TcpProxy, with_port
from support import Harness, unique_id, until

from engine import IO, Context, EngineError, Schedule, clock, job
from engine.scheduler import Scheduler

pytestmark = pytest.mark.timeout(120)


async def _schedule(harness: Harness, job_id: str) -> dict[str, Any]:
    (row,) = await harness.engine.schedules(job_id)
    return row


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def _move_past(harness: Harness, when: float, schedulers: list[Scheduler]) -> None:
    """Moves the clock just past `when`, then waits until every scheduler has looked at the
    schedules since (so a second run, if any worker were to make one, would exist by then)."""
    clock.advance(when - clock.now() + 0.5)
    for s in schedulers:
        s.wake.set()
    await until(
        lambda: all(s._triggers_at > when for s in schedulers),
        "every scheduler to look at the schedules after the tick",
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    """Polls an async condition until true (generous deadline: the machine is busy)."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")


async def _completed(harness: Harness, job_id: str, n: int) -> bool:
    runs = await harness.engine.list_runs(job_id)
    return len(runs) == n and all(r["status"] == "COMPLETED" for r in runs)


async def _runs(harness: Harness, job_id: str) -> list[dict[str, Any]]:
    runs = await harness.engine.list_runs(job_id)
    return sorted(runs, key=lambda r: r["payload"]["scheduled_at"])


async def test_each_tick_gives_one_run_across_three_workers(harness: Harness) -> None:
    @job(id=unique_id("tick"), schedule="*/5 * * * *", timezone="Europe/Paris")
    async def ticked(payload: Any, io: IO, ctx: Context) -> Any:
        assert ctx.scheduled_at is not None  # the same tick, as a datetime
        assert ctx.scheduled_at.isoformat(timespec="microseconds") == payload["scheduled_at"]
        return payload

    workers = [await harness.start(ticked) for _ in range(3)]
    first = _at((await _schedule(harness, ticked.id))["next_fire_times"][0])
    assert datetime.fromtimestamp(first, UTC).minute % 5 == 0
    for n, tick in enumerate((first, first + 300), start=1):
        await _move_past(harness, tick, workers)
        await eventually(partial(_completed, harness, ticked.id, n), f"{n} completed runs")
        runs = await _runs(harness, ticked.id)
        assert len(runs) == n, runs
        assert runs[-1]["payload"] == {"scheduled_at": _iso(tick)}
        assert runs[-1]["output"] == {"scheduled_at": _iso(tick)}
        row = await _schedule(harness, ticked.id)
        assert _at(row["next_fire_times"][0]) == tick + 300
        assert (row["last_tick_at"], row["last_run_id"]) == (_iso(tick), runs[-1]["id"])


@pytest.mark.parametrize("missed", ["latest", "all"])
async def test_ticks_missed_while_no_worker_ran_follow_the_policy(
    harness: Harness, missed: str
) -> None:
    @job(id=unique_id("missed"), schedule=[Schedule("* * * * *", missed=missed)])  # type: ignore[arg-type]
    async def every_minute(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    await harness.start(every_minute)
    first = _at((await _schedule(harness, every_minute.id))["next_fire_times"][0])
    await harness.stop()
    # Down for a little over an hour: ticks first, first + 60, ..., first + 3600 are missed.
    clock.advance(first + 3630 - clock.now())
    worker = await harness.start(every_minute)
    expected = [first + 3600] if missed == "latest" else [first + 60 * i for i in range(61)]
    await eventually(
        lambda: _completed(harness, every_minute.id, len(expected)), f"{len(expected)} runs"
    )
    await _move_past(harness, clock.now(), [worker])
    runs = await _runs(harness, every_minute.id)
    assert [r["payload"]["scheduled_at"] for r in runs] == [_iso(t) for t in expected]
    row = await _schedule(harness, every_minute.id)
    assert _at(row["next_fire_times"][0]) == first + 3660


async def test_missed_skip_fires_no_missed_tick_only_the_next(harness: Harness) -> None:
    @job(id=unique_id("skip"), schedule=[Schedule("* * * * *", missed="skip")])
    async def every_minute(payload: Any, io: IO, ctx: Context) -> Any:
        return {
            "tick": ctx.scheduled_at.isoformat(timespec="microseconds")
            if ctx.scheduled_at
            else None
        }

    await harness.start(every_minute)
    first = _at((await _schedule(harness, every_minute.id))["next_fire_times"][0])
    await harness.stop()
    # Down for an hour and a half minute: the latest missed tick is 30 s old, beyond SKIP_AFTER.
    clock.advance(first + 3630 - clock.now())
    worker = await harness.start(every_minute)

    async def moved_on() -> bool:
        row = await _schedule(harness, every_minute.id)
        return _at(row["next_fire_times"][0]) == first + 3660

    # Moved on in the transaction that would have inserted a run: none was.
    await eventually(moved_on, "the schedule to move past the missed ticks")
    assert await harness.engine.list_runs(every_minute.id) == []
    # The next tick, on time, fires; a run triggered by hand has no tick.
    await _move_past(harness, first + 3660, [worker])
    await eventually(lambda: _completed(harness, every_minute.id, 1), "the next tick's run")
    by_hand = await harness.engine.trigger(every_minute.id)
    assert (await harness.engine.wait_for(by_hand, 60))["output"] == {"tick": None}
    runs = [r for r in await harness.engine.list_runs(every_minute.id) if r["id"] != by_hand]
    assert [r["output"] for r in runs] == [{"tick": _iso(first + 3660)}]


async def test_a_paused_schedule_does_not_fire_and_resumes_from_its_next_tick(
    harness: Harness,
) -> None:
    @job(id=unique_id("paused"), schedule=["*/10 * * * *", "0 9 * * 1-5"])
    async def twice(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    worker = await harness.start(twice)
    assert await harness.engine.pause_schedule(twice.id, " */10  * * * *") == 1
    listed = {r["expression"]: r for r in await harness.engine.schedules(twice.id)}
    assert listed["*/10 * * * *"]["paused"] and listed["*/10 * * * *"]["next_fire_times"] == []
    assert not listed["0 9 * * 1-5"]["paused"]
    # Ten minutes on: the paused schedule's tick passes without a run.
    await _move_past(harness, clock.now() + 600, [worker])
    assert await harness.engine.list_runs(twice.id) == []
    assert await harness.engine.resume_schedule(twice.id) == 1
    resumed = {r["expression"]: r for r in await harness.engine.schedules(twice.id)}
    tick = _at(resumed["*/10 * * * *"]["next_fire_times"][0])
    assert clock.now() < tick <= clock.now() + 600
    await _move_past(harness, tick, [worker])
    await eventually(lambda: _completed(harness, twice.id, 1), "the resumed tick's run")
    (run,) = await harness.engine.list_runs(twice.id)
    assert run["payload"] == {"scheduled_at": _iso(tick)}
    with pytest.raises(EngineError, match=r"has no schedule '\* \* \* \* \*'"):
        await harness.engine.pause_schedule(twice.id, "* * * * *")


@pytest.mark.postgres
async def test_a_tick_due_during_a_database_outage_fires_once_it_is_back(pg_head_url: str) -> None:
    @job(id=unique_id("outage-tick"), schedule="*/5 * * * *")
    async def ticked(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    with TcpProxy("127.0.0.1", 5432) as proxy:
        harness = Harness(with_port(pg_head_url, proxy.port))
        try:
            worker = await harness.start(ticked)
            tick = _at((await _schedule(harness, ticked.id))["next_fire_times"][0])
            # The database goes away (connections cut mid-statement, new ones refused) just as
            # the tick falls due: the worker rides it out, and fires the tick once it is back.
            proxy.refuse()
            proxy.cut()
            clock.advance(tick - clock.now() + 0.5)
            worker.wake.set()
            await until(lambda: worker.outage.ongoing, "the outage to be noticed")
            proxy.accept()
            await eventually(partial(_completed, harness, ticked.id, 1), "the tick's run")
            await _move_past(harness, clock.now(), [worker])
            (run,) = await harness.engine.list_runs(ticked.id)
            assert run["payload"] == {"scheduled_at": _iso(tick)}
            assert _at((await _schedule(harness, ticked.id))["next_fire_times"][0]) == tick + 300
        finally:
            await harness.close()
