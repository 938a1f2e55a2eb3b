"""SQLite: a child run's creation (`io.invoke`) and a stream flush (`io.stream.write`) refused
because another process holds the file's lock past the busy timeout (tests/faults.py,
`SQLiteLock`). The write is retried, as a transient error, until the lock is released; the child
is created once and the chunks are recorded once, in order. (tests/integration/core/
test_cut_commits.py does the same on PostgreSQL with a connection cut mid-commit.)

No timing window: the job waits (outside any step, so nothing is written meanwhile) until the
lock is held, and the test releases the lock only once the store has logged a retry of that
very write."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from faults import SQLiteLock
from support import Harness, unique_id, until

from engine import IO, Context, Task, job

pytestmark = [pytest.mark.timeout(180)]


def retried(caplog: pytest.LogCaptureFixture, what: str) -> bool:
    return any(
        r.getMessage().startswith(f"{what}: transient database error, retrying")
        for r in caplog.records
    )


async def test_a_child_is_created_once_past_a_locked_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.store")
    calls: Counter[str] = Counter()
    go = asyncio.Event()

    @job(id=unique_id("kid"))
    async def kid(payload: Any, io: IO, ctx: Context) -> str:
        async def made(task: Task) -> str:
            calls["kid"] += 1
            return "made"

        return await io.run_task("made", made)

    @job(id=unique_id("parent"))
    async def parent(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> str:
            calls[task.key] += 1
            return task.key

        await io.run_task("before", step)
        await go.wait()  # not a step: nothing is written while the test takes the lock
        got = await io.invoke("kid", kid.id, None)
        await io.run_task("after", step)
        return got

    db = tmp_path / "engine.db"
    h = Harness(f"sqlite+aiosqlite:///{db}?timeout=0.5")
    try:
        await h.start(parent, kid, lease_seconds=60)
        run_id = await h.engine.trigger(parent.id, None)
        await until(lambda: calls["before"] == 1, "the first step", 60)
        await until_recorded(h, run_id, "before")
        async with SQLiteLock(db):
            go.set()
            await until(lambda: retried(caplog, "starting child runs"), "a retried start", 60)
        final = await h.engine.wait_for(run_id, 90)
        assert (final["status"], final["output"]) == ("COMPLETED", "made"), final
        assert calls == {"before": 1, "after": 1, "kid": 1}, calls
        children = (await h.engine.show_run(run_id))["child_runs"]
        assert [c["status"] for c in children] == ["COMPLETED"], children
    finally:
        go.set()
        await h.close()


async def test_stream_chunks_are_recorded_once_in_order_past_a_locked_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine.store")
    go = asyncio.Event()

    @job(id=unique_id("streamer"))
    async def streamer(payload: Any, io: IO, ctx: Context) -> int:
        await io.stream.write("out", 0)  # the stream is known to the writer from here on
        await go.wait()
        for n in range(1, 40):
            await io.stream.write("out", n)
        return 40

    db = tmp_path / "engine.db"
    h = Harness(f"sqlite+aiosqlite:///{db}?timeout=0.5")
    try:
        await h.start(streamer, lease_seconds=60)
        run_id = await h.engine.trigger(streamer.id, None)
        await until_streamed(h, run_id)
        async with SQLiteLock(db):
            go.set()
            await until(lambda: retried(caplog, "recording stream chunks"), "a retried flush", 60)
        final = await h.engine.wait_for(run_id, 90)
        assert final["status"] == "COMPLETED", final
        chunks = [c async for c in h.engine.read_stream(run_id, "out")]
        assert [c.data for c in chunks] == list(range(40))
        assert [c.seq for c in chunks] == list(range(1, 41))
    finally:
        go.set()
        await h.close()


async def until_streamed(h: Harness, run_id: str) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while not await h.store.streams_of_run(run_id):
        assert asyncio.get_running_loop().time() < deadline, "the first chunk never recorded"
        await asyncio.sleep(0.02)


async def until_recorded(h: Harness, run_id: str, key: str) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while not any(
        t["key"] == key and t["status"] == "COMPLETED" for t in await h.store.get_tasks(run_id)
    ):
        assert asyncio.get_running_loop().time() < deadline, f"task {key} never recorded"
        await asyncio.sleep(0.02)
