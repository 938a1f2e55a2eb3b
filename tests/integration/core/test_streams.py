"""Streams: io.stream.write publishes chunks in order, durably, fenced, once across replays;
Engine.read_stream follows them while the run goes on and after, and resumes after a position."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import Harness, unique_id

from engine import (
    IO,
    Context,
    EngineError,
    NotSerializableError,
    RetryPolicy,
    RunNotFoundError,
    StreamChunk,
    Task,
    clock,
    job,
    secrets,
)
from engine.exceptions import LeaseLost
from engine.records import ChunkWrite, Registration
from engine.replay import Replay
from engine.streams import MAX_CHUNK_BYTES


async def _read_all(harness: Harness, run_id: str, after: int | None = None) -> list[StreamChunk]:
    return [c async for c in harness.engine.read_stream(run_id, "out", after=after)]


async def test_a_reader_follows_the_stream_while_the_run_goes_on_and_sees_its_end(
    harness: Harness,
) -> None:
    gate = asyncio.Event()

    @job(id=unique_id("stream"))
    async def talker(payload: Any, io: IO, ctx: Context) -> str:
        await io.stream.write("out", "Hel")
        await io.stream.write("out", {"token": "lo"})
        await gate.wait()  # the test holds the run here while it reads
        await io.stream.write("out", 3)
        await io.stream.write("out", 1.0)
        return "done"

    await harness.start(talker)
    run_id = await harness.engine.trigger(talker.id)
    reader = harness.engine.read_stream(run_id, "out")
    first = await asyncio.wait_for(anext(reader), 30)
    second = await asyncio.wait_for(anext(reader), 30)
    assert (first.seq, first.data, first.task, first.attempt) == (1, "Hel", (), 0)
    assert (second.seq, second.data) == (2, {"token": "lo"})
    assert (await harness.engine.get_run(run_id))["status"] == "RUNNING"
    gate.set()
    rest = [c async for c in reader]  # ends once the run has ended
    assert [(c.seq, c.data) for c in rest] == [(3, 3), (4, 1.0)]
    assert type(rest[1].data) is float
    assert (await harness.engine.get_run(run_id))["status"] == "COMPLETED"
    assert await harness.engine.list_streams(run_id) == [
        {"stream": "out", "chunks": 4, "last_seq": 4, "last_at": rest[1].written_at.isoformat()}
    ]


async def test_a_replay_does_not_write_a_recorded_chunk_again_and_a_reader_resumes(
    harness: Harness,
) -> None:
    executions: list[int] = []

    @job(id=unique_id("stream-replay"))
    async def replayed(payload: Any, io: IO, ctx: Context) -> None:
        executions.append(1)
        for i in range(3):
            await io.stream.write("out", f"before-{i}")
        await io.wait("pause", 0.05)  # unloaded, then replayed from the top
        await io.stream.write("out", "after")

    await harness.start(replayed)
    view = await harness.run(replayed)
    assert view["status"] == "COMPLETED" and len(executions) == 2
    chunks = await _read_all(harness, view["id"])
    assert [c.data for c in chunks] == ["before-0", "before-1", "before-2", "after"]
    assert [c.seq for c in chunks] == [1, 2, 3, 4]
    # A reader that saw up to seq 2 before it lost its connection resumes there.
    assert [c.data for c in await _read_all(harness, view["id"], after=2)] == [
        "before-2",
        "after",
    ]
    assert await _read_all(harness, view["id"], after=4) == []


async def test_a_task_run_again_writes_after_its_failed_attempt_flagged_restart(
    harness: Harness,
) -> None:
    @job(id=unique_id("stream-retry"))
    async def retried(payload: Any, io: IO, ctx: Context) -> str:
        async def answer(task: Task) -> str:
            await io.stream.write("out", f"attempt {task.attempt} starts")
            if task.attempt == 1:
                raise RuntimeError("cut off mid-answer")
            await io.stream.write("out", "and ends")
            return "ok"

        await io.stream.write("out", "top")
        return await io.run_task("answer", answer, retry=RetryPolicy(max_attempts=2, min_delay=0))

    await harness.start(retried)
    view = await harness.run(retried)
    assert view["status"] == "COMPLETED"
    chunks = await _read_all(harness, view["id"])
    seen = [(c.data, c.task, c.attempt, c.restart) for c in chunks]
    assert seen == [
        ("top", (), 0, False),
        ("attempt 1 starts", ("answer",), 1, False),
        ("attempt 2 starts", ("answer",), 2, True),
        ("and ends", ("answer",), 2, False),
    ]


async def test_bad_chunks_and_names_are_refused_at_the_call(harness: Harness) -> None:
    @job(id=unique_id("stream-bad"))
    async def bad(payload: Any, io: IO, ctx: Context) -> list[str]:
        refused = []
        for name, data in [
            ("out", object()),
            ("out", "x" * (MAX_CHUNK_BYTES + 1)),
            ("", "x"),
            ("a\nb", "x"),
        ]:
            try:
                await io.stream.write(name, data)
            except (EngineError, NotSerializableError) as exc:
                refused.append(str(exc))
        await io.stream.write("out", "fine")
        return refused

    await harness.start(bad)
    view = await harness.run(bad)
    assert view["status"] == "COMPLETED"
    refused = view["output"]
    assert "io.stream.write('out') data" in refused[0]
    assert f"write at most {MAX_CHUNK_BYTES}" in refused[1]
    assert "non-empty string" in refused[2] and "control characters" in refused[3]
    assert [c.data for c in await _read_all(harness, view["id"])] == ["fine"]


async def test_reading_an_unknown_run_is_one_clear_error(harness: Harness) -> None:
    await harness.engine.upgrade()
    with pytest.raises(RunNotFoundError):
        await anext(harness.engine.read_stream("nope", "out"))
    with pytest.raises(EngineError, match="after=-1"):
        await anext(harness.engine.read_stream("nope", "out", after=-1))


async def test_an_execution_that_lost_its_lease_publishes_nothing(harness: Harness) -> None:
    store = harness.store
    await harness.engine.upgrade()
    await store.register_jobs([Registration("j", "1", None)])
    run_id, _ = await store.create_run("j", "1", {}, None)
    (claim,) = await store.claim_runs("w1", 1, 30, ["j@1"])
    chunk = ChunkWrite("out", 1, "[]", 0, 1, '"early"', False, clock.now())
    assert await store.write_chunks(run_id, claim.epoch, [chunk])
    # The lease lapses and another worker claims the run: the old execution goes on writing.
    clock.advance(31)
    (reclaim,) = await store.claim_runs("w2", 1, 30, ["j@1"])
    late = ChunkWrite("out", 2, "[]", 0, 2, '"late"', False, clock.now())
    assert not await store.write_chunks(run_id, claim.epoch, [late])
    # Through an execution's own writer: the flush is refused and the job stops.
    zombie = await Replay.load(store, run_id, claim.epoch, "w1")
    await zombie_write(zombie)
    with pytest.raises(LeaseLost):
        await zombie.streams.flush()  # type: ignore[union-attr]
    assert zombie.lost
    status, rows = await store.read_chunks(run_id, "out", 0, 100)
    assert status == "RUNNING" and [r[3] for r in rows] == ["early"]
    # The new owner writes freely.
    assert await store.write_chunks(run_id, reclaim.epoch, [late])


async def zombie_write(replay: Replay) -> None:
    from engine.streams import StreamIO

    # Its first write is recognised as the recorded "early" (a replay); the second is new.
    await StreamIO(replay).write("out", "replayed")
    await StreamIO(replay).write("out", "zombie")


async def test_a_secret_written_to_a_stream_is_not_recorded(harness: Harness) -> None:
    secret = "sk-stream-secret-0123456789"
    secrets.register(secret)

    @job(id=unique_id("stream-secret"))
    async def leaky(payload: Any, io: IO, ctx: Context) -> None:
        await io.stream.write("out", {"note": f"key={secret}"})

    await harness.start(leaky)
    view = await harness.run(leaky)
    (chunk,) = await _read_all(harness, view["id"])
    assert chunk.data == {"note": "key=[REDACTED]"}
