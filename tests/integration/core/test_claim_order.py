"""The claim takes the ready runs of every status (QUEUED, WAITING past its wake-up, RUNNING
with a lapsed lease) together in rank order, `limit` at most (SQLite reads each status apart:
engine.sql claim_runs), and leaves the runs that are not ready."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import bindparam, text
from support import Harness, unique_id

from engine import IO, Context, clock, job
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
