"""Events: an event sent to a waiting run -> the run going on, with 10 and with 10,000 runs
waiting, and the worker's memory with 10,000 runs waiting for events.

The worker is a subprocess (this file with --child): an `Engine` plus a `Scheduler`
(concurrency `--concurrency`) running a job that does
`await io.wait_for_event("e", "bench.go", match={"i": payload["i"]})` and then a task that
returns time.time(). The parent sends each event from its own process (so the worker hears of it
as it would in production: NOTIFY on PostgreSQL, the file's data_version on SQLite), one at a
time; latency = the time the job recorded - the moment just before `Engine.send_event` was
called (the send's own transaction included).

    10 waiting      `--sends` runs, plus 10 that never get an event, all WAITING; each event
                    matches one run
    10,000 waiting  `--runs` more runs WAITING (other match values), then `--sends` measured
                    runs again: the send looks its waits up by an index, not by a scan, so the
                    two medians should be the same

Memory: the worker's VmRSS after one warm-up run, and after the `--runs` runs are WAITING.

    python bench/bench_events.py [--db sqlite|postgres|both] [--runs 10000] [--sends 30]

Targets: median <= 20 ms on PostgreSQL, <= 60 ms on SQLite; RSS growth <= 20 MB; the median with
10,000 waiting about the one with 10.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from typing import Any

import common

TARGET_MS = {"postgres": 20.0, "sqlite": 60.0}
TARGET_MB = 20.0
FILLER = 1_000_000  # match values of the runs that never get an event


def make_job(job_id: str) -> Any:
    from engine import job

    async def now(task: Any) -> float:
        return time.time()

    @job(job_id)
    async def waiter(payload: Any, io: Any, ctx: Any) -> float:
        await io.wait_for_event("e", "bench.go", match={"i": payload["i"]})
        return float(await io.run_task("continue", now))

    return waiter


async def child(spec: str) -> None:
    url, job_id, concurrency = json.loads(spec)
    worker = common.Worker(url)
    await worker.start(make_job(job_id), concurrency=concurrency)
    await common.serve_rss(worker)


async def waiting(parent: common.Worker, count: int, timeout: float) -> None:
    await parent.wait_until(lambda c: c.get("WAITING", 0) >= count, timeout, every=0.2)


async def latencies(parent: common.Worker, run_ids: dict[int, str]) -> list[float]:
    """Sends the event of each run, one at a time; the delays from send to the job going on."""
    engine = parent.engine
    out = []
    for i, run_id in run_ids.items():
        sent = time.time()
        result = await engine.send_event("bench.go", {"i": i})
        assert result.woke == [run_id], (i, result)
        # Look rarely: on SQLite every read here takes the write lock the worker needs (the
        # latency itself is the job's own clock reading, not when this loop sees it).
        while True:
            await asyncio.sleep(0.25)
            run = await engine.get_run(run_id)
            if run["status"] == "COMPLETED":
                break
        out.append(float(run["output"]) - sent)
    return out


async def bench(db: common.BenchDB, args: Any) -> dict[str, Any]:
    job = make_job(common.unique_job_id("events"))
    parent = common.Worker(db.url, pool_size=5)
    await parent.prepare(job)
    worker = await common.Child.start(__file__, [db.url, job.id, args.concurrency])
    out: dict[str, Any] = {}
    try:
        # Warm-up: one run through a whole wait and delivery.
        (warm,) = await common.create_runs(parent.store, job, [{"i": -1}])
        await waiting(parent, 1, 60)
        await latencies(parent, {-1: warm})
        out["warm"] = await worker.ask("rss")

        fillers = [{"i": FILLER + k} for k in range(10)]
        measured = list(range(args.sends))
        ids = await common.create_runs(parent.store, job, fillers + [{"i": i} for i in measured])
        await waiting(parent, len(ids), 120)
        out["few"] = await latencies(parent, dict(zip(measured, ids[10:], strict=True)))

        t0 = time.perf_counter()
        many = [{"i": FILLER + 10 + k} for k in range(args.runs)]
        await common.create_runs(parent.store, job, many)
        await waiting(parent, 10 + args.runs, args.timeout)
        out["seconds"] = time.perf_counter() - t0
        out["after"] = await worker.ask("rss")
        measured = list(range(args.sends, 2 * args.sends))
        ids = await common.create_runs(parent.store, job, [{"i": i} for i in measured])
        await waiting(parent, 10 + args.runs + len(ids), 120)
        out["many"] = await latencies(parent, dict(zip(measured, ids, strict=True)))
        await worker.stop()
    finally:
        await worker.kill()
        await parent.close()
    return out


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(f"bench_events ({args.runs} runs waiting for events)", kind)
        async with common.bench_db(kind) as db:
            r = await db.between_floors(args.floor_ops, bench(db, args))
            target = TARGET_MS[kind]
            floor = db.driver_floor_ms()
            rows = []
            for label, samples in (("10 waiting", r["few"]), (f"{args.runs} waiting", r["many"])):
                median = common.ms(statistics.median(samples))
                rows.append(
                    (
                        f"event -> run goes on, {label}",
                        median,
                        common.ms(common.pct(samples, 95)),
                        median / floor,
                        "ok" if median <= target else "MISS",
                    )
                )
            common.table(
                ("latency", "median ms", "p95 ms", "x driver floor", f"target <= {target:g} ms"),
                rows,
            )
            growth = (r["after"]["rss"] - r["warm"]["rss"]) / 1024
            common.table(
                ("worker RSS", "VmRSS MB", f"target growth <= {TARGET_MB:g} MB"),
                [
                    ("after 1 warm-up run", r["warm"]["rss"] / 1024, ""),
                    (f"after {args.runs} runs WAITING", r["after"]["rss"] / 1024, ""),
                    ("growth", growth, "ok" if growth <= TARGET_MB else "MISS"),
                ],
            )
            print(
                f"{args.runs} runs to WAITING in {r['seconds']:.1f} s; "
                f"driver floor {floor:.3f} ms\n",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[2]))
        sys.exit(0)
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--sends", type=int, default=30)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--timeout", type=float, default=300.0)
    asyncio.run(main(p.parse_args()))
