"""Real `kill -9` of `engine run`, then a fresh worker: the interrupted run finishes, and what was
committed before the crash is never executed again. Also the graceful SIGTERM path."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import bindparam, text

from engine import Engine
from engine.schema import UTCDateTime

pytestmark = pytest.mark.slow

N_TASKS = 40


def test_kill9_mid_run_then_a_new_worker_finishes(procs: Any, db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "tasks.log"
    run_id = procs.start(
        db_url, "many-tasks", {"log": str(log), "n": N_TASKS, "sleep": 0.05}, app="crash.py"
    )
    first = procs.worker("crash.py", db_url)
    procs.wait_until(lambda: len(procs.lines(log)) >= 15, 30, "15 task lines")
    first.kill9()

    before = procs.view(db_url, run_id)
    assert before["status"] == "RUNNING", before["status"]
    committed = procs.completed_keys(before["tasks"])
    assert len(committed) >= 10, committed
    executed = procs.counts(log)
    # Commit before the next effect: nothing after an uncommitted task has started.
    assert committed <= set(executed)
    assert len(set(executed) - committed) <= 1, (sorted(executed), sorted(committed))

    second = procs.worker("crash.py", db_url)
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=40)
    after = procs.view(db_url, run_id)
    assert after["output"] == {"count": N_TASKS}
    keys = [f"t{i:02d}" for i in range(N_TASKS)]
    assert [t["key"] for t in after["tasks"]] == keys
    assert all(t["status"] == "COMPLETED" for t in after["tasks"])

    counts = procs.counts(log)
    assert set(counts) == set(keys)
    twice = {k: n for k, n in counts.items() if n != 1}
    for key in committed:
        assert counts[key] == 1, f"{key} was committed before the kill and ran {counts[key]}x"
    # Only the task in flight at the kill may have run twice.
    assert len(twice) <= 1 and set(twice) <= set(executed) - committed, twice
    # Tasks committed before the crash keep their attempt count.
    attempts = {t["key"]: t["attempts"] for t in after["tasks"]}
    assert all(attempts[k] == 1 for k in committed), attempts
    second.signal(signal.SIGTERM)
    assert second.wait(20) == 0, second.output


def _tasks(url: str, run_id: str) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        async with Engine(url) as engine:
            tasks: list[dict[str, Any]] = (await engine.show_run(run_id))["tasks"]
            return tasks

    return asyncio.run(read())


def test_kill9_mid_step_keeps_the_lost_attempt_with_its_worker(
    procs: Any, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "hang.log"
    run_id = procs.start(db_url, "hangs-once", {"log": str(log)}, app="crash.py")
    first = procs.worker("crash.py", db_url)
    # A step running for more than a second is marked RUNNING in the log: kill only then.
    procs.wait_until(
        lambda: [t["status"] for t in _tasks(db_url, run_id)] == ["RUNNING"],
        30,
        "the hanging step to be marked RUNNING",
    )
    first.kill9()

    second = procs.worker("crash.py", db_url)
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=40)
    view = procs.view(db_url, run_id)
    assert view["output"] == {"attempt": 2}
    assert procs.lines(log) == ["attempt 1", "attempt 2"]
    (task,) = view["tasks"]
    assert (task["status"], task["attempts"]) == ("COMPLETED", 2)
    lost, done = task["attempt_history"]
    assert (lost["attempt"], lost["status"], lost["worker"], lost["error"]) == (
        1,
        "LOST",
        first.id,
        None,
    )
    assert lost["started_at"] is not None and lost["ended_at"] is None
    assert (done["attempt"], done["status"], done["worker"]) == (2, "COMPLETED", second.id)
    shown = procs.ok("runs", "show", run_id, "--database-url", db_url)
    assert f"attempt 1 LOST on worker {first.id}" in shown, shown
    assert f"attempt 2 COMPLETED on worker {second.id}" in shown, shown


def test_kill9_while_waiting(procs: Any, db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "nap.log"
    # An hour-long sleep holds the run WAITING for as long as the test needs; the test then
    # makes it due itself (no window in which the state must be observed).
    run_id = procs.start(db_url, "napper", {"log": str(log), "seconds": 3600}, app="crash.py")
    first = procs.worker("crash.py", db_url)
    procs.wait_status(db_url, run_id, "WAITING", timeout=20)
    first.kill9()
    assert procs.lines(log) == ["before"]

    procs.worker("crash.py", db_url)
    # The restarted worker honours the recorded due time: still asleep.
    assert procs.status(db_url, run_id) == "WAITING"
    due = make_due(db_url, run_id, "nap")
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=30)
    view = procs.view(db_url, run_id)
    assert view["output"] == "rested"
    assert [(t["key"], t["status"]) for t in view["tasks"]] == [
        ("before", "COMPLETED"),
        ("nap", "COMPLETED"),
        ("after", "COMPLETED"),
    ]
    assert procs.lines(log) == ["before", "after"]
    # The durable sleep was honoured across the crash: nothing ran before it was due.
    after = datetime.fromisoformat(view["tasks"][2]["started_at"])
    assert after >= due - timedelta(milliseconds=5), (after, due)


def make_due(url: str, run_id: str, key: str) -> datetime:
    """Ends a durable sleep now, as if its time had come: the recorded due time and the run's
    wake time are set to the present."""
    now = datetime.now(UTC)

    async def update() -> None:
        engine = Engine(url)
        try:
            async with engine.store.begin() as conn:
                await conn.execute(
                    text(
                        "UPDATE engine_tasks SET due_at = :now WHERE run_id = :id AND key = :key"
                    ).bindparams(bindparam("now", type_=UTCDateTime)),
                    {"now": now, "id": run_id, "key": key},
                )
                await conn.execute(
                    text("UPDATE engine_runs SET wake_at = :now WHERE id = :id").bindparams(
                        bindparam("now", type_=UTCDateTime)
                    ),
                    {"now": now, "id": run_id},
                )
        finally:
            await engine.close()

    asyncio.run(update())
    return now


def test_kill9_while_a_background_poll_is_pending(
    procs: Any, db_url: str, tmp_path: Path, flag_server: Any
) -> None:
    log = tmp_path / "poll.log"
    run_id = procs.start(
        db_url, "poller", {"log": str(log), "url": flag_server.url}, app="crash.py"
    )
    first = procs.worker("crash.py", db_url)
    procs.wait_status(db_url, run_id, "WAITING", timeout=20)
    procs.wait_until(lambda: flag_server.hits >= 2, 20, "the worker to poll the URL")
    first.kill9()
    assert procs.lines(log) == ["before"]
    waiting = procs.view(db_url, run_id)
    assert [(t["key"], t["status"]) for t in waiting["tasks"]] == [
        ("before", "COMPLETED"),
        ("status", "WAITING"),
    ]

    hits = flag_server.hits
    procs.worker("crash.py", db_url)
    # The new worker takes the poll over (once the dead one's hold on it has expired).
    procs.wait_until(lambda: flag_server.hits >= hits + 2, 20, "the new worker to poll")
    assert procs.status(db_url, run_id) == "WAITING"
    flag_server.ready.set()
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=20)

    view = procs.view(db_url, run_id)
    assert view["output"] == {"polled": {"answer": 42, "items": ["a", "b"]}}
    assert [(t["key"], t["status"]) for t in view["tasks"]] == [
        ("before", "COMPLETED"),
        ("status", "COMPLETED"),
        ("after", "COMPLETED"),
    ]
    assert view["tasks"][1]["output"] == {"answer": 42, "items": ["a", "b"]}
    assert procs.lines(log) == ["before", "after"]


def sigterm_during_the_long_task(procs: Any, url: str, log: Path) -> str:
    """Starts a worker, SIGTERMs it while the 2 s task runs; returns the run id."""
    run_id: str = procs.start(url, "long", {"log": str(log), "seconds": 2}, app="crash.py")
    first = procs.worker("crash.py", url)
    procs.wait_until(lambda: "long-start" in procs.lines(log), 20, "the long task to start")
    sent = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0, first.output
    elapsed = time.monotonic() - sent
    assert elapsed < 10, f"the worker took {elapsed:.1f}s to stop"
    assert procs.lines(log) == ["long-start", "long-end"]
    return run_id


def test_sigterm_lets_the_running_task_commit_then_exits_0(
    procs: Any, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "long.log"
    run_id = sigterm_during_the_long_task(procs, db_url, log)
    stopped = procs.view(db_url, run_id)
    assert stopped["status"] != "COMPLETED", "the stopping worker started the next step"
    assert stopped["status"] not in ("FAILED", "CANCELED"), stopped
    assert [(t["key"], t["status"]) for t in stopped["tasks"]] == [("long", "COMPLETED")]


def test_after_sigterm_a_new_worker_finishes_the_run(
    procs: Any, sqlite_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "long.log"
    run_id = sigterm_during_the_long_task(procs, sqlite_url, log)
    procs.worker("crash.py", sqlite_url)
    procs.wait_status(sqlite_url, run_id, "COMPLETED", timeout=8)
    assert procs.view(sqlite_url, run_id)["output"] == "finished"
    assert procs.lines(log) == ["long-start", "long-end", "after"]
