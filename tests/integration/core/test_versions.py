"""Version routing (docs/concepts.md, "Versions"): pinned, the triggering process's own code,
the highest version a live worker serves, else the highest registered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import unique_id

from engine import IO, Context, Engine, UnknownJobError, clock, job
from engine.exceptions import UnknownVersionError
from engine.records import Registration


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[Engine]:
    async with Engine(db_url) as opened:
        await opened.upgrade()
        yield opened


async def _version(engine: Engine, job_id: str, version: str | None = None) -> str:
    run_id = await engine.trigger(job_id, {}, version=version)
    return str((await engine.get_run(run_id))["job_version"])


async def test_a_trigger_goes_to_the_highest_version_a_live_worker_serves(engine: Engine) -> None:
    store = engine.store
    # 1.10 registered first, 1.9 after it (an old worker started to drain old runs).
    await store.register_jobs([Registration("j", "1.10", None)])
    clock.advance(1)
    await store.register_jobs([Registration("j", "1.9", None)])
    assert await _version(engine, "j") == "1.10"  # no live worker: the highest registered

    await store.upsert_worker("old", "h", 1, ["j@1.9"], 60)
    assert await _version(engine, "j") == "1.9"  # the only version served
    await store.upsert_worker("new", "h", 2, ["j@1.10", "k@1"], 5)
    assert await _version(engine, "j") == "1.10"
    assert await _version(engine, "j", version="1.9") == "1.9"

    listed = {j["job_id"]: j for j in await engine.jobs()}
    assert listed["j"]["default_version"] == "1.10"
    assert [
        (v["version"], v["live_workers"], v["worker_ids"]) for v in listed["j"]["versions"]
    ] == [
        ("1.9", 1, ["old"]),
        ("1.10", 1, ["new"]),
    ]

    clock.advance(10)  # "new" stopped heartbeating: no longer live
    assert await _version(engine, "j") == "1.9"
    await store.remove_worker("old")
    assert await _version(engine, "j") == "1.10"


async def test_a_pinned_version_must_be_registered(engine: Engine) -> None:
    await engine.store.register_jobs([Registration("j", "2", None), Registration("j", "10", None)])
    with pytest.raises(UnknownVersionError) as refused:
        await engine.trigger("j", {}, version="3")
    assert "has no version '3' registered (registered: 2, 10)" in str(refused.value)
    with pytest.raises(UnknownJobError):
        await engine.trigger("nope", {}, version="3")
    assert await engine.list_runs() == []


async def test_the_triggering_process_uses_its_own_code_unless_pinned(engine: Engine) -> None:
    @job(id=unique_id("local"), version="1")
    async def local(payload: Any, io: IO, ctx: Context) -> None:
        return None

    await engine.store.register_jobs([Registration(local.id, "2", None)])
    await engine.store.upsert_worker("w", "h", 1, [f"{local.id}@2"], 60)
    assert await _version(engine, local.id) == "1"
    assert await _version(engine, local.id, version="2") == "2"
