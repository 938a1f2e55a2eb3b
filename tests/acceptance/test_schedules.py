"""The CLI of schedules, delays and deadlines, and `kill -9` of a worker in the middle of a
scheduled run and with a delayed run queued: nothing lost, no tick fired twice."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import bindparam, text

from engine import Engine
from engine.app import load_app
from engine.schema import UTCDateTime
from engine.worker import register

T = TypeVar("T")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

YEARLY = "0 0 1 1 *"


def _sql(url: str, sql: str, **values: Any) -> None:
    """One UPDATE from outside the engine (a test making a due time come now)."""

    async def update() -> None:
        engine = Engine(url)
        try:
            statement = text(sql).bindparams(
                *(bindparam(k, type_=UTCDateTime) for k, v in values.items() if k.endswith("at"))
            )
            async with engine.store.begin() as conn:
                await conn.execute(statement, values)
        finally:
            await engine.close()

    asyncio.run(update())


def _read(url: str, read: Callable[[Engine], Awaitable[T]]) -> T:
    """A read through the Python API: cheaper than the CLI where the CLI is not under test."""

    async def go() -> T:
        async with Engine(url) as engine:
            return await read(engine)

    return asyncio.run(go())


def _schedules(url: str) -> dict[str, dict[str, Any]]:
    return {s["expression"]: s for s in _read(url, lambda e: e.schedules())}


def test_schedules_list_pause_resume_and_trigger_delay_at_timeout(
    procs: Any, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDULED_LOG", str(tmp_path / "steps.log"))
    jobs = load_app(str(Path(__file__).parent / "apps" / "scheduled.py"))

    async def registered(engine: Engine) -> None:
        await engine.upgrade()
        await register(engine.store, jobs)  # what `engine run` does when it starts

    _read(sqlite_url, registered)
    url = ["--database-url", sqlite_url]

    table = procs.ok("schedules", "list", *url)
    assert "yearly" in table and YEARLY in table and "Europe/Paris" in table, table
    listed = {s["expression"]: s for s in json.loads(procs.ok("schedules", "list", "--json", *url))}
    year = datetime.now(UTC).year + 1
    assert listed[YEARLY]["next_fire_times"] == [
        f"{year + i}-01-01T00:00:00.000000+00:00" for i in range(3)
    ]
    assert (listed[YEARLY]["paused"], listed[YEARLY]["timezone"]) == (False, "UTC")
    # Midnight on 1 July in Paris is 22:00 UTC the day before (summer time).
    assert listed["0 0 1 7 *"]["next_fire_times"][0].endswith("-06-30T22:00:00.000000+00:00")

    assert procs.ok("schedules", "pause", "yearly", "--schedule", YEARLY, *url) == (
        "paused 1 schedule(s) of yearly\n"
    )
    listed = _schedules(sqlite_url)
    assert listed[YEARLY]["paused"] and listed[YEARLY]["next_fire_times"] == []
    assert not listed["0 0 1 7 *"]["paused"]
    missing = procs.cli("schedules", "pause", "yearly", "--schedule", "* * * * *", *url)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1, str(missing)
    assert "job 'yearly' has no schedule '* * * * *'" in missing.stderr
    assert procs.ok("schedules", "resume", "yearly", *url) == "resumed 1 schedule(s) of yearly\n"
    assert not _schedules(sqlite_url)[YEARLY]["paused"]

    delayed = procs.ok("trigger", "later", "--delay", "10m", "--timeout", "2h", *url).strip()
    pinned = procs.ok("trigger", "later", "--at", "2099-12-01T09:00:00Z", *url).strip()
    shown = procs.show(sqlite_url, delayed)
    assert shown["status"] == "QUEUED" and shown["waiting_for"]["reason"] == "delay", shown
    until = datetime.fromisoformat(shown["delayed_until"])
    deadline = datetime.fromisoformat(shown["deadline_at"])
    assert (deadline - until).total_seconds() == 7200
    pinned_view = _read(sqlite_url, lambda e: e.show_run(pinned))
    assert pinned_view["delayed_until"] == "2099-12-01T09:00:00.000000+00:00"
    assert "delayed until 2099-12-01 09:00:00" in procs.ok("runs", "list", *url)
    for flag, value, message in (
        ("--delay", "soon", "error: --delay 'soon': give a duration such as 90s, 10m, 2h"),
        ("--at", "tomorrow", "error: --at 'tomorrow': give an ISO 8601 time"),
    ):
        bad = procs.cli("trigger", "later", flag, value, *url)
        assert bad.returncode == 1 and bad.stderr.startswith(message), str(bad)
        assert bad.stderr.count("\n") == 1, str(bad)


def test_kill9_during_a_scheduled_run_with_a_delayed_run_queued_loses_nothing(
    procs: Any, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "steps.log"
    monkeypatch.setenv("SCHEDULED_LOG", str(log))
    first = procs.worker("scheduled.py", db_url)
    delayed = procs.ok("trigger", "later", "--delay", "1h", "--database-url", db_url).strip()
    # The yearly tick of 1 January comes now: the schedule is due since then.
    tick = datetime(datetime.now(UTC).year, 1, 1, tzinfo=UTC)
    _sql(
        db_url,
        "UPDATE engine_schedules SET next_fire_at = :due_at WHERE expression = :expression",
        due_at=tick,
        expression=YEARLY,
    )
    procs.wait_until(lambda: len(procs.lines(log)) >= 10, 60, "10 steps of the scheduled run")
    first.kill9()

    (run,) = _read(db_url, lambda e: e.list_runs("yearly"))
    assert run["status"] == "RUNNING", run
    assert run["payload"] == {"scheduled_at": tick.isoformat(timespec="microseconds")}
    shown = _read(db_url, lambda e: e.show_run(run["id"]))
    committed = procs.completed_keys(shown["tasks"])
    assert procs.status(db_url, delayed) == "QUEUED"

    procs.worker("scheduled.py", db_url)
    procs.wait_status(db_url, run["id"], "COMPLETED", timeout=60)
    assert procs.status(db_url, delayed) == "QUEUED"  # its hour has not come
    _sql(
        db_url,
        "UPDATE engine_runs SET wake_at = :now_at WHERE id = :id",
        now_at=datetime.now(UTC),
        id=delayed,
    )
    procs.wait_status(db_url, delayed, "COMPLETED", timeout=60)

    # One run for the tick, whichever worker fired it; its committed steps ran once.
    (done,) = _read(db_url, lambda e: e.list_runs("yearly"))
    assert done["output"] == {"scheduled_at": run["payload"]["scheduled_at"], "steps": 20}
    counts = procs.counts(log)
    assert all(counts[key] == 1 for key in committed), counts
    assert {k for k, n in counts.items() if n > 1} <= {f"y{len(committed):02d}"}, counts
    assert [counts[f"l{i:02d}"] for i in range(3)] == [1, 1, 1]
    listed = _schedules(db_url)
    assert listed[YEARLY]["last_tick_at"] == tick.isoformat(timespec="microseconds")
    assert listed[YEARLY]["last_run_id"] == run["id"]
    assert listed[YEARLY]["next_fire_times"][0] == f"{tick.year + 1}-01-01T00:00:00.000000+00:00"
