"""A connection lost in the middle of a commit, on the paths that write more than a task: a child
run's creation (`io.invoke`), a stream flush (`io.stream.write`) and a signal (`engine runs
signal`).

Every fault is real and placed exactly: the engine reaches PostgreSQL through a TCP proxy
(tests/faults.py, `TcpProxy`), a `CommitGate` holds the commit at its last moment, the proxy cuts
every connection and refuses new ones, and then the held commit either lands (the server commits,
the engine never hears of it) or is lost (its backend is terminated first). Either way the
engine retries, or reports, and the outcome is the same: each thing written once, in order.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from faults import CommitGate, TcpProxy, pg_execute, with_port
from support import Harness, unique_id, until

from engine import IO, Context, Task, job

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(180)]

OUTCOMES = pytest.mark.parametrize("landed", [True, False], ids=["commit-landed", "commit-lost"])


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5432) as p:
        yield p


async def cut_at_the_gate(
    gate: CommitGate, proxy: TcpProxy, landed: bool, reconnects: int = 3
) -> None:
    """Once a commit is held: every connection cut, new ones refused until the engine has tried
    again `reconnects` times; then the held commit lands or is lost, and connections are let
    through."""
    pid = await gate.wait_held()
    proxy.refuse()
    proxy.cut()
    tries = proxy.refused + reconnects
    await until(lambda: proxy.refused >= tries, "the engine trying to reconnect", 60)
    if not landed:
        await gate.terminate(pid)
    await gate.release()
    await gate.wait_gone(pid)
    proxy.accept()


def rows(url: str, sql: str, *args: Any) -> list[Any]:
    return pg_execute(url, sql, *args)


@OUTCOMES
async def test_a_child_is_created_once_when_its_commit_is_cut(
    pg_head_url: str, proxy: TcpProxy, landed: bool
) -> None:
    calls: Counter[str] = Counter()

    @job(id=unique_id("kid"))
    async def kid(payload: dict[str, int], io: IO, ctx: Context) -> dict[str, int]:
        async def double(task: Task) -> int:
            calls["kid"] += 1
            return payload["n"] * 2

        return {"doubled": await io.run_task("double", double)}

    @job(id=unique_id("parent"))
    async def parent(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> str:
            calls[task.key] += 1
            return task.key

        await io.run_task("before", step)
        got = await io.invoke("kid", kid.id, {"n": 21})
        await io.run_task("after", step)
        return got

    h = Harness(with_port(pg_head_url, proxy.port))
    try:
        async with CommitGate(pg_head_url, "engine_runs", "NEW.parent_run_id IS NOT NULL") as gate:
            await h.start(parent, kid, lease_seconds=60)
            run_id = await h.engine.trigger(parent.id, None)
            await cut_at_the_gate(gate, proxy, landed)
            final = await h.engine.wait_for(run_id, 120)
        assert final["status"] == "COMPLETED", final
        assert final["output"] == {"doubled": 42}
        assert calls == {"before": 1, "after": 1, "kid": 1}, calls
        children = rows(
            pg_head_url, "SELECT id, status FROM engine_runs WHERE parent_run_id = $1", run_id
        )
        assert [c["status"] for c in children] == ["COMPLETED"], children
        invokes = rows(
            pg_head_url,
            "SELECT status, attempts FROM engine_tasks WHERE run_id = $1 AND kind = 'invoke'",
            run_id,
        )
        assert [(t["status"], t["attempts"]) for t in invokes] == [("COMPLETED", 1)], invokes
    finally:
        await h.close()


@OUTCOMES
async def test_stream_chunks_survive_a_cut_flush_once_and_in_order(
    pg_head_url: str, proxy: TcpProxy, landed: bool
) -> None:
    calls: Counter[str] = Counter()

    @job(id=unique_id("streamer"))
    async def streamer(payload: Any, io: IO, ctx: Context) -> int:
        async def step(task: Task) -> str:
            calls[task.key] += 1
            return task.key

        for n in range(30):
            await io.stream.write("out", n)
        await io.run_task("middle", step)  # everything written before is committed first
        for n in range(30, 60):
            await io.stream.write("out", n)
        await io.run_task("end", step)
        return 60

    h = Harness(with_port(pg_head_url, proxy.port))
    try:
        async with CommitGate(pg_head_url, "engine_stream_chunks") as gate:
            await h.start(streamer, lease_seconds=60)
            run_id = await h.engine.trigger(streamer.id, None)
            await cut_at_the_gate(gate, proxy, landed)
            final = await h.engine.wait_for(run_id, 120)
        assert final["status"] == "COMPLETED", final
        assert calls == {"middle": 1, "end": 1}, calls
        chunks = [c async for c in h.engine.read_stream(run_id, "out")]
        assert [c.data for c in chunks] == list(range(60))
        assert [c.seq for c in chunks] == list(range(1, 61))
        assert not any(c.restart for c in chunks)
        stored = rows(
            pg_head_url,
            "SELECT count(*) AS n, count(DISTINCT n) AS writes FROM engine_stream_chunks "
            "WHERE run_id = $1",
            run_id,
        )
        assert (stored[0]["n"], stored[0]["writes"]) == (60, 60), stored
    finally:
        await h.close()


@OUTCOMES
async def test_a_signal_cut_mid_commit_is_sent_once_and_resumes_the_run_once(
    pg_head_url: str, proxy: TcpProxy, landed: bool
) -> None:
    calls: Counter[str] = Counter()

    @job(id=unique_id("signaled"))
    async def signaled(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> str:
            calls[task.key] += 1
            return task.key

        got = await io.wait_for_signal("approval", "approve")
        await io.run_task("after", step)
        return got

    url = with_port(pg_head_url, proxy.port)
    h = Harness(pg_head_url)  # the worker is not cut: only the signal's sender is
    try:
        await h.start(signaled, lease_seconds=60)
        run_id = await h.engine.trigger(signaled.id, None)
        await wait_waiting(h, run_id)
        async with CommitGate(pg_head_url, "engine_signals") as gate:
            sender = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine", "runs", "signal", run_id, "approve",
                "--payload", '{"ok": 1}', "--database-url", url,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                # The send is retried (a signal is deduplicated by its id and this call's token).
                await cut_at_the_gate(gate, proxy, landed)
                out, err = await asyncio.wait_for(sender.communicate(), 60)
            finally:
                if sender.returncode is None:
                    sender.kill()
                    await sender.wait()
        # Whether or not its first commit landed, the sender says what happened, once.
        assert sender.returncode == 0, (out, err)
        assert out.decode().strip() == f"signaled {run_id}: its wait for 'approve' is over", out
        assert "Traceback" not in err.decode(), err
        final = await h.engine.wait_for(run_id, 60)
        assert final["status"] == "COMPLETED", final
        assert final["output"] == {"ok": 1}
        assert calls == {"after": 1}, calls
        sent = rows(  # one signal stored, and taken by the wait
            pg_head_url,
            "SELECT consumed_at IS NOT NULL AS consumed FROM engine_signals WHERE run_id = $1",
            run_id,
        )
        assert [s["consumed"] for s in sent] == [True], sent
    finally:
        await h.close()


async def wait_waiting(h: Harness, run_id: str) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while (await h.engine.get_run(run_id))["status"] != "WAITING":
        assert asyncio.get_running_loop().time() < deadline, "the run never waited"
        await asyncio.sleep(0.05)
