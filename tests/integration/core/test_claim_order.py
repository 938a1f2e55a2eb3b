"""The claim takes the ready runs of every status (QUEUED, WAITING past its wake-up, RUNNING
with a lapsed lease) together in rank order, `limit` at most (SQLite reads each status apart:
engine.sql claim_runs), and leaves the runs that are not ready."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faults import SQLiteLock
from sqlalchemy import bindparam, text
from support import Harness, unique_id

from engine import IO, Context, clock, job, pollers
from engine.exceptions import DatabaseError
from engine.scheduler import Scheduler
from engine.schema import UTCDateTime
from engine.worker import register

pytestmark = pytest.mark.timeout(120)


@job(id=unique_id("order"))
async def _order(payload: Any, io: IO, ctx: Context) -> Any:
    return None


async def _set(harness: Harness, run_id: str, sql: str, at: float) -> None:
    update = text(f"UPDATE engine_runs SET {sql} WHERE id = :id").bindparams(
        bindparam("at", type_=UTCDateTime)
    )
    async with harness.store.begin() as conn:
        await conn.execute(update, {"id": run_id, "at": at})


async def test_ready_runs_of_every_status_are_claimed_in_rank_order(harness: Harness) -> None:
    await harness.engine.upgrade()
    await register(harness.store, [_order])
    ids = [await harness.engine.trigger(_order.id, {"n": n}) for n in range(7)]
    past, future = clock.now() - 60, clock.now() + 3600
    # Ranks: ids[k] ranks k-th. Not ready: a WAITING run not yet due, a RUNNING run still
    # leased, a delayed QUEUED run.
    await _set(harness, ids[0], "status = 'WAITING', wake_at = :at", future)
    await _set(harness, ids[1], "status = 'RUNNING', lease_expires_at = :at", future)
    await _set(harness, ids[2], "status = 'RUNNING', lease_expires_at = :at", past)
    await _set(harness, ids[3], "wake_at = :at", future)
    await _set(harness, ids[5], "status = 'WAITING', wake_at = :at", past)
    # Ready, in rank order: ids[2] (lease lapsed), ids[4] (queued), ids[5] (due), ids[6].
    first = await harness.store.claim_runs("w", 2, 30, [_order.key])
    assert {r.id for r in first} == {ids[2], ids[4]}
    rest = await harness.store.claim_runs("w", 10, 30, [_order.key])
    assert {r.id for r in rest} == {ids[5], ids[6]}
    assert await harness.store.claim_runs("w", 10, 30, [_order.key]) == []


async def _never_done(params: dict[str, Any]) -> pollers.PollResult:
    return pollers.PollResult(done=False)


async def test_an_idle_sqlite_worker_writes_nothing_and_takes_no_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "engine.db"
    # A short busy timeout: a loop that needs the write lock says so at once.
    h = Harness(f"sqlite+aiosqlite:///{path}?timeout=0.2")
    # A registered poller: an idle worker's poll claim reads first too.
    pollers.register(unique_id("idle-poller"), _never_done)
    scheduler = Scheduler(h.store, [_order], lease_seconds=5)
    try:
        await h.engine.upgrade()
        await register(h.store, [_order])
        delayed = await h.engine.trigger(_order.id, delay=timedelta(minutes=5))

        async def idle_loop() -> None:
            # One round of Scheduler.run with nothing to do: the claims, then the next due time.
            assert await scheduler.tick() is False
            due = await h.store.next_due([_order.key], sorted(pollers.registered()))
            assert due is not None and due > clock.now()  # the delayed run's wake-up
            assert scheduler.active == {}

        other = sqlite3.connect(path)
        try:
            version = other.execute("PRAGMA data_version").fetchone()[0]
            for _ in range(5):
                await idle_loop()
            # data_version moves when another connection commits a change.
            assert other.execute("PRAGMA data_version").fetchone()[0] == version
        finally:
            other.close()

        async with SQLiteLock(path):
            for _ in range(3):
                await idle_loop()
            clock.advance(6 * 60)
            # The delayed run is ready now: the claim needs the write lock another process holds.
            with pytest.raises(DatabaseError) as info:
                await scheduler.tick()
            assert info.value.transient and "database is locked" in info.value.message
        fresh = await h.engine.trigger(_order.id)
        await scheduler.tick()
        assert set(scheduler.active) == {delayed, fresh}
        await asyncio.gather(*scheduler.active.values())
        for run_id in (delayed, fresh):
            assert (await h.engine.get_run(run_id))["status"] == "COMPLETED"
    finally:
        await h.close()


@pytest.mark.postgres
async def test_postgres_claim_skips_locked_runs_and_locks_only_its_own(pg_url: str) -> None:
    # With runs locked by another transaction (another worker's claim in flight), a claim
    # takes the first unlocked ready runs in rank order, and locks nothing else.
    h = Harness(pg_url)
    try:
        await h.engine.upgrade()
        await register(h.store, [_order])
        ids = [await h.engine.trigger(_order.id, {"n": n}) for n in range(60)]
        locked = ids[:40]
        holder = h.store.engine
        async with holder.connect() as other:
            await other.execute(
                text("SELECT id FROM engine_runs WHERE id IN :ids FOR UPDATE").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": locked},
            )
            claimed = await h.store.claim_runs("w", 2, 30, [_order.key])
            assert {r.id for r in claimed} == set(ids[40:42])
            await other.rollback()
        rest = await h.store.claim_runs("w", 100, 30, [_order.key])
        assert {r.id for r in rest} == set(ids) - set(ids[40:42])
    finally:
        await h.close()
