"""Cost of `io.stream.write` per chunk, and how long a chunk takes to reach a reader.

Write cost: a job writes `--chunks` short chunks (default 10,000, like tokens) as fast as it
can, in one execution. Reported per chunk: the time the job spends in `io.stream.write` (the
call returns once the chunk is buffered) and the time until every chunk is committed (the
execution ends only after its last flush), both against the raw floor (one single-row
INSERT+COMMIT) measured in the same run.

Latency: a job writes `--paced` chunks, one every `--interval` ms, each holding the wall time it
was written at; a reader receives them and the delay is the receive time minus that. Two
readers: `Engine.read_stream` in the worker's process, and `engine runs stream --json` in
another process (SQLite: it polls every 50 ms; PostgreSQL: LISTEN/NOTIFY).

    python bench/bench_streams.py [--db sqlite|postgres|both] [--chunks 10000] [--paced 200]
                                  [--interval 5]
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import common

ENGINE_CLI = str(Path(sys.executable).parent / "engine")


def make_writer(n: int, results: list[float]) -> Any:
    from engine import job

    @job(common.unique_job_id("stream-write"))
    async def write_chunks(payload: Any, io: Any, ctx: Any) -> int:
        perf = time.perf_counter
        start = perf()
        for i in range(n):
            await io.stream.write("tokens", f" tok{i}")
        results.append(perf() - start)
        return n

    return write_chunks


def make_paced(n: int, interval: float, ready: asyncio.Event) -> Any:
    from engine import job

    @job(common.unique_job_id("stream-paced"))
    async def paced(payload: Any, io: Any, ctx: Any) -> int:
        await io.stream.write("tokens", {"ready": True})
        await ready.wait()  # both readers are following
        for i in range(n):
            await io.stream.write("tokens", {"i": i, "at": time.time()})
            await asyncio.sleep(interval)
        return n

    return paced


async def write_cost(worker: common.Worker, args: Any) -> dict[str, float]:
    from engine.executor import execute

    in_job: list[float] = []
    job = make_writer(args.chunks, in_job)
    await worker.prepare(job)
    store = worker.store
    totals = []
    for _ in range(args.repeat):
        await common.create_runs(store, job, [None])
        (claimed,) = await store.claim_runs("bench", 1, 300, [job.key])
        t0 = time.perf_counter()
        outcome = await execute(store, job, claimed, "bench")
        totals.append(time.perf_counter() - t0)
        assert outcome.status == "COMPLETED", outcome
    return {
        "call_us": statistics.median(in_job) / args.chunks * 1e6,
        "committed_us": statistics.median(totals) / args.chunks * 1e6,
    }


async def latency(worker: common.Worker, url: str, args: Any) -> dict[str, list[float]]:
    from engine import Engine
    from engine.executor import execute

    ready = asyncio.Event()
    job = make_paced(args.paced, args.interval / 1000, ready)
    await worker.prepare(job)
    store = worker.store
    (run_id,) = await common.create_runs(store, job, [None])
    (claimed,) = await store.claim_runs("bench", 1, 300, [job.key])
    running = asyncio.create_task(execute(store, job, claimed, "bench"))
    delays: dict[str, list[float]] = {"in-process reader": [], "other process (CLI)": []}

    async def in_process() -> None:
        async with Engine(url, pool_size=2) as reader:
            async for chunk in reader.read_stream(run_id, "tokens"):
                if "at" in chunk.data:
                    delays["in-process reader"].append(time.time() - chunk.data["at"])

    cli = await asyncio.create_subprocess_exec(
        ENGINE_CLI, "runs", "stream", run_id, "tokens", "--json", "--database-url", url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    local = asyncio.create_task(in_process())
    assert cli.stdout is not None
    first = json.loads(await asyncio.wait_for(cli.stdout.readline(), 120))
    assert first["data"] == {"ready": True}
    ready.set()
    while line := await cli.stdout.readline():
        data = json.loads(line)["data"]
        delays["other process (CLI)"].append(time.time() - data["at"])
    await cli.wait()
    await local
    assert (await running).status == "COMPLETED"
    return delays


async def bench(db: common.BenchDB, args: Any) -> tuple[dict[str, float], dict[str, Any]]:
    worker = common.Worker(db.url, pool_size=5)
    try:
        cost = await write_cost(worker, args)
        delays = await latency(worker, db.url, args)
    finally:
        await worker.close()
    return cost, delays


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(f"bench_streams ({args.chunks} chunks x {args.repeat} runs)", kind)
        async with common.bench_db(kind) as db:
            cost, delays = await db.between_floors(args.floor_ops, bench(db, args))
            floor_us = db.driver_floor_ms() * 1000
            common.table(
                ("io.stream.write, per chunk", "us", "x floor"),
                [
                    ("the call (buffered)", cost["call_us"], cost["call_us"] / floor_us),
                    ("until committed", cost["committed_us"], cost["committed_us"] / floor_us),
                    ("driver floor (1 INSERT+COMMIT)", floor_us, 1.0),
                ],
            )
            rows = []
            for reader, samples in delays.items():
                med, _mean, p95 = common.summary_ms(samples)
                rows.append((reader, len(samples), med, p95, common.ms(max(samples))))
            common.table(
                (f"write -> reader, 1 chunk / {args.interval} ms", "chunks", "median ms",
                 "p95 ms", "max ms"),
                rows,
            )  # fmt: skip


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--chunks", type=int, default=10000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--paced", type=int, default=200)
    p.add_argument("--interval", type=float, default=5.0, help="ms between paced chunks")
    asyncio.run(main(p.parse_args()))
