"""The deadline sweep (`Store.cancel_expired`, run by every scheduler loop about once a second):
it reads first and opens a write transaction only when a run is past its deadline, so an idle
SQLite worker does not take the write lock every second."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from faults import SQLiteLock
from support import Harness, unique_id

from engine import IO, Context, clock, job
from engine.exceptions import DatabaseError
from engine.scheduler import deadline_error

pytestmark = pytest.mark.timeout(120)


@job(id=unique_id("sweep"))
async def _unserved(payload: Any, io: IO, ctx: Context) -> Any:
    return None


async def test_an_expired_run_is_canceled_and_the_next_sweep_finds_nothing(
    harness: Harness,
) -> None:
    await harness.engine.upgrade()
    due = await harness.engine.trigger(_unserved.id, timeout=timedelta(minutes=5))
    later = await harness.engine.trigger(_unserved.id, timeout=timedelta(minutes=20))
    assert await harness.store.cancel_expired(deadline_error) == 0
    clock.advance(6 * 60)
    assert await harness.store.cancel_expired(deadline_error) == 1
    assert await harness.store.cancel_expired(deadline_error) == 0
    run = await harness.engine.get_run(due)
    assert run["status"] == "CANCELED" and run["error"]["type"] == "RunTimeoutError"
    assert (await harness.engine.get_run(later))["status"] == "QUEUED"


async def test_a_sweep_with_nothing_due_writes_nothing_and_takes_no_write_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "engine.db"
    # A short busy timeout: a sweep that needs the write lock says so at once.
    h = Harness(f"sqlite+aiosqlite:///{path}?timeout=0.2")
    try:
        await h.engine.upgrade()
        run_id = await h.engine.trigger(_unserved.id, timeout=timedelta(minutes=5))
        other = sqlite3.connect(path)
        try:
            version = other.execute("PRAGMA data_version").fetchone()[0]
            for _ in range(5):
                assert await h.store.cancel_expired(deadline_error) == 0
            # data_version moves when another connection commits a change.
            assert other.execute("PRAGMA data_version").fetchone()[0] == version
        finally:
            other.close()

        async with SQLiteLock(path):
            assert await h.store.cancel_expired(deadline_error) == 0
            clock.advance(6 * 60)
            # Something is due now: the sweep needs the write lock, held by another process.
            with pytest.raises(DatabaseError) as info:
                await h.store.cancel_expired(deadline_error)
            assert info.value.transient and "database is locked" in info.value.message
        assert await h.store.cancel_expired(deadline_error) == 1
        assert (await h.engine.get_run(run_id))["status"] == "CANCELED"
    finally:
        await h.close()
