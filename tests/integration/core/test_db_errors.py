"""Database errors, real ones: refusals by a CHECK constraint or a trigger (permanent), a file
locked by another process and a full disk (transient). A permanent refusal ends its task ERRORED
and its run FAILED once, without costing any other run its commit; a transient one is retried
until the database is back."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import SQLiteLock
from sqlalchemy import text
from support import Harness, unique_id, until

from engine import IO, Context, Task, clock, job
from engine.exceptions import DatabaseError
from engine.scheduler import Scheduler

# Refuse any stored value holding the word "poison": the engine's own checks accept it.
_REFUSE_SQLITE = """
CREATE TRIGGER refuse_{table}_{op} BEFORE {op} ON {table}
WHEN NEW.output LIKE '%poison%' BEGIN SELECT RAISE(ABORT, 'poison refused'); END
"""
_REFUSE_PG = (
    "ALTER TABLE {table} ADD CONSTRAINT refuse_{table} CHECK (output::text NOT LIKE '%poison%')"
)


async def _refuse_poison(h: Harness, table: str) -> str:
    """Installs the refusal; returns the text the database's message holds."""
    await h.engine.upgrade()
    async with h.store.begin() as conn:
        if h.store.is_postgres:
            await conn.execute(text(_REFUSE_PG.format(table=table)))
            return f'check constraint "refuse_{table}"'
        for op in ("INSERT", "UPDATE"):
            await conn.execute(text(_REFUSE_SQLITE.format(table=table, op=op)))
    return "poison refused"


async def _past_every_lease(scheduler: Scheduler) -> None:
    """Every lease taken so far expires, then the scheduler makes one claim round and whatever
    it claimed runs to its end: a run that could be executed again would be, right here (no
    real waiting through lease periods)."""
    clock.advance(60)
    await scheduler.tick()
    await asyncio.gather(*scheduler.active.values(), return_exceptions=True)


async def test_a_refused_step_outcome_fails_the_run_once(harness: Harness) -> None:
    refused = await _refuse_poison(harness, "engine_tasks")
    calls: list[int] = []

    @job(id=unique_id("poison-step"))
    async def poisoned(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> Any:
            calls.append(task.attempt)
            return "poison"

        await io.run_task("ok", lambda task: asyncio.sleep(0, "fine"))
        return await io.run_task("bad", step)

    scheduler = await harness.start(poisoned, lease_seconds=1)
    run_id = await harness.engine.trigger(poisoned.id, None)
    view = await harness.engine.wait_for(run_id, 60)
    assert view["status"] == "FAILED"
    assert refused in view["error"]["message"]
    # Past every lease: nothing re-executes the step.
    await _past_every_lease(scheduler)
    view = await harness.engine.show_run(run_id)
    assert view["status"] == "FAILED" and calls == [1]
    tasks = {t["key"]: t for t in view["tasks"]}
    assert tasks["ok"]["status"] == "COMPLETED" and tasks["ok"]["output"] == "fine"
    bad = tasks["bad"]
    assert bad["status"] == "ERRORED" and bad["output"] is None
    assert bad["error"]["type"] == "WriteRefusedError" and refused in bad["error"]["message"]

    # `engine runs retry` runs it again: refused again, FAILED again.
    await harness.engine.retry(run_id)
    await until(lambda: len(calls) == 2, "the retried step", timeout=60.0)
    view = await harness.engine.wait_for(run_id, 60)
    assert view["status"] == "FAILED" and refused in view["error"]["message"]
    await _past_every_lease(scheduler)
    # The retried step is its second attempt: a retry keeps counting (the first is kept).
    assert calls == [1, 2]
    assert (await harness.engine.show_run(run_id))["status"] == "FAILED"


async def test_a_refused_return_value_fails_the_run_once(harness: Harness) -> None:
    refused = await _refuse_poison(harness, "engine_runs")
    executions: list[int] = []

    @job(id=unique_id("poison-return"))
    async def poisoned(payload: Any, io: IO, ctx: Context) -> Any:
        executions.append(1)
        return {"value": "poison"}

    scheduler = await harness.start(poisoned, lease_seconds=1)
    run_id = await harness.engine.trigger(poisoned.id, None)
    view = await harness.engine.wait_for(run_id, 60)
    assert view["status"] == "FAILED" and view["output"] is None
    assert view["error"]["type"] == "WriteRefusedError"
    assert "return value" in view["error"]["message"] and refused in view["error"]["message"]
    await _past_every_lease(scheduler)
    assert executions == [1]
    assert (await harness.engine.show_run(run_id))["status"] == "FAILED"


async def test_one_refused_write_costs_no_other_run_its_commit(sqlite_harness: Harness) -> None:
    h = sqlite_harness
    refused = await _refuse_poison(h, "engine_tasks")
    n = 300
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    started: set[str] = set()
    everyone = asyncio.Event()

    @job(id=unique_id("batch"))
    async def batch(payload: Any, io: IO, ctx: Context) -> Any:
        async def first(task: Task) -> Any:
            counts[(task.run_id, task.key)] += 1
            started.add(task.run_id)
            if len(started) >= n:
                everyone.set()
            await everyone.wait()  # all outcomes arrive together: they share commits
            return "poison" if payload["poison"] else payload["i"]

        async def second(task: Task) -> Any:
            counts[(task.run_id, task.key)] += 1
            return payload["i"] * 2

        a = await io.run_task("a", first)
        return [a, await io.run_task("b", second)]

    scheduler = await h.start(batch, concurrency=n, lease_seconds=2)
    ids = [await h.engine.trigger(batch.id, {"i": i, "poison": i == 7}) for i in range(n)]
    for i, run_id in enumerate(ids):
        if i != 7:
            view = await h.engine.wait_for(run_id, 120)
            assert view["status"] == "COMPLETED", view["error"]
            assert view["output"] == [i, 2 * i]
            assert counts[(run_id, "a")] == 1 and counts[(run_id, "b")] == 1
    view = await h.engine.wait_for(ids[7], 60)
    assert view["status"] == "FAILED" and refused in view["error"]["message"]
    assert counts[(ids[7], "a")] == 1 and counts[(ids[7], "b")] == 0
    # Past every lease, still no step ran twice.
    await _past_every_lease(scheduler)
    twice = {k: c for k, c in counts.items() if c != 1}
    assert twice == {}
    assert sum(counts.values()) == 2 * n - 1


async def test_a_write_that_cannot_be_prepared_fails_alone(sqlite_harness: Harness) -> None:
    """A value the driver cannot even bind fails its own write, not the batch it was in."""
    h = sqlite_harness
    await h.engine.upgrade()
    from engine.records import Registration, TaskWrite

    await h.store.register_jobs([Registration("j", "v", None)])
    run_id, _ = await h.store.create_run("j", "v", None, None)
    claimed = await h.store.claim_runs("w", 1, 30, ["j@v"])
    epoch = claimed[0].epoch if claimed else 0

    def row(key: str, **fields: Any) -> TaskWrite:
        return TaskWrite("[]", key, "task", "t", "COMPLETED", 1, 1, **fields)

    good = [h.store.write_task(run_id, epoch, row(f"k{i}", output=i)) for i in range(5)]
    bad = h.store.write_task(run_id, epoch, row("bad", due_at=1e300))  # no datetime holds it
    results = await asyncio.gather(*good, bad, return_exceptions=True)
    assert results[:5] == [True] * 5
    assert isinstance(results[5], DatabaseError) and not results[5].transient
    assert {t["key"] for t in await h.store.get_tasks(run_id)} == {f"k{i}" for i in range(5)}


# -- transient faults: a lock held by another process, a full disk --------------------------------


def _held_job(gate: asyncio.Event, counts: collections.Counter[str], size: int = 10) -> Any:
    @job(id=unique_id("held"))
    async def held(payload: Any, io: IO, ctx: Context) -> Any:
        async def first(task: Task) -> Any:
            counts[task.key] += 1
            await gate.wait()
            return "x" * size

        async def second(task: Task) -> Any:
            counts[task.key] += 1
            return "done"

        a = await io.run_task("a", first)
        return [len(a), await io.run_task("b", second)]

    return held


def _seen(caplog: pytest.LogCaptureFixture, message: str) -> Callable[[], bool]:
    return lambda: any(message in r.getMessage() for r in caplog.records)


async def test_a_lock_past_the_busy_timeout_is_waited_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.store")
    path = tmp_path / "engine.db"
    h = Harness(f"sqlite+aiosqlite:///{path}?timeout=0.2")
    gate, counts = asyncio.Event(), collections.Counter[str]()
    held = _held_job(gate, counts)
    try:
        # A long lease and idle poll: this test is about the step's own write, not the loop.
        await h.start(held, lease_seconds=30, idle_poll=60)
        run_id = await h.engine.trigger(held.id, None)
        await until(lambda: counts["a"] == 1, "the step to start", timeout=60.0)
        async with SQLiteLock(path):
            # The scheduler loop's writes do not wait: they say at once that it is transient.
            with pytest.raises(DatabaseError) as info:
                await h.store.heartbeat("another-worker", 30, [run_id])
            assert info.value.transient and "database is locked" in info.value.message
            # Its reads take no write lock (test_claim_order.py): they answer.
            assert await h.store.next_due([held.key], []) is not None

            gate.set()  # the step's outcome meets the lock, and is retried
            await until(_seen(caplog, "database is locked"), "a retried write", timeout=60.0)
            assert counts["b"] == 0  # the job waits for its commit
        view = await h.engine.wait_for(run_id, 60)
        assert view["status"] == "COMPLETED" and view["output"] == [10, "done"]
        assert counts == {"a": 1, "b": 1}
    finally:
        await h.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, where this process may mount one."""
    mount = tmp_path / "small"
    mount.mkdir()
    if shutil.which("mount") is None or (hasattr(os, "geteuid") and os.geteuid() != 0):
        pytest.skip("mounting a small tmpfs needs root and mount(8)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(directory: Path) -> Path:
    filler = directory / f"filler-{uuid.uuid4().hex}"
    chunk = b"\0" * 65536
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    return filler


async def test_a_full_disk_is_reported_and_waited_out(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.store")
    h = Harness(f"sqlite+aiosqlite:///{small_disk / 'engine.db'}")
    gate, counts = asyncio.Event(), collections.Counter[str]()
    # An outcome bigger than anything written before: the WAL must grow to hold it.
    held = _held_job(gate, counts, size=1_500_000)
    try:
        await h.start(held, lease_seconds=30, idle_poll=60)
        run_id = await h.engine.trigger(held.id, None)
        await until(lambda: counts["a"] == 1, "the step to start", timeout=60.0)
        filler = _fill(small_disk)

        gate.set()
        await until(_seen(caplog, "database or disk is full"), "a retried write", timeout=60.0)
        assert not _seen(caplog, "cannot rollback")()
        assert counts["b"] == 0  # the job waits for its commit

        filler.unlink()
        view = await h.engine.wait_for(run_id, 60)
        assert view["status"] == "COMPLETED" and view["output"] == [1_500_000, "done"]
        assert counts == {"a": 1, "b": 1}
    finally:
        await h.close()


# -- classification of real errors ------------------------------------------------------------


async def test_real_errors_are_classified(harness: Harness) -> None:
    """A refusal (bad value, constraint, bad SQL) is permanent; a dropped connection is
    transient and the connection is not handed out again."""
    store = harness.store
    await harness.engine.upgrade()
    cast = "CAST('not json' AS json)" if store.is_postgres else "json('not json')"
    for sql in (
        f"SELECT {cast}",
        "INSERT INTO engine_runs (id) VALUES (NULL)",
        "SELECT * FROM no_such_table_here",
    ):
        with pytest.raises(DatabaseError) as info:
            async with store.begin() as conn:
                await conn.execute(text(sql))
        assert info.value.transient is False, (sql, info.value.message)

    if not store.is_postgres:
        return
    async with store.engine.connect() as conn:  # at least one pooled connection
        await conn.execute(text("SELECT 1"))
    import asyncpg

    admin = await asyncpg.connect(
        store.parsed_url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        # Every pooled connection dies (the pool hands them out in FIFO order: killing only
        # one would leave the next use to a live one).
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        # Termination is asynchronous: wait until those backends are really gone.
        deadline = time.monotonic() + 30
        while await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ):
            assert time.monotonic() < deadline, "the terminated backends did not exit"
            await asyncio.sleep(0.01)
    finally:
        await admin.close()
    # The raw read path meets the dead connection: transient (one attempt, no retry here).
    with pytest.raises(DatabaseError) as info:
        await store._load_replay("x")
    assert info.value.transient is True, info.value.message
    # It was not handed back to the pool: the next read gets a live connection at once.
    started = time.monotonic()
    assert await store.load_replay("x") == ([], set())
    assert time.monotonic() - started < 5


async def test_a_lock_that_outlasts_the_patience_stops_the_execution(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Past `Store.patience` the execution stops without recording anything more (nothing is
    failed for a transient error); the run stays RUNNING, to be picked up again."""
    caplog.set_level(logging.DEBUG, logger="engine")
    path = tmp_path / "engine.db"
    h = Harness(f"sqlite+aiosqlite:///{path}?timeout=0.1")
    h.store.patience = 0.5
    gate, counts = asyncio.Event(), collections.Counter[str]()
    held = _held_job(gate, counts)
    try:
        await h.start(held, lease_seconds=30, idle_poll=60)
        run_id = await h.engine.trigger(held.id, None)
        await until(lambda: counts["a"] == 1, "the step to start", timeout=60.0)
        async with SQLiteLock(path):
            gate.set()
            await until(_seen(caplog, "it resumes once its lease lapses"), "the stop", timeout=60.0)
        view = await h.engine.show_run(run_id)
        assert view["status"] == "RUNNING" and view["tasks"] == []
        assert counts == {"a": 1}
    finally:
        await h.close()
