"""Latencies of one worker: a wait ending -> the job continuing, and a trigger -> the run starting.

(a) wait -> continue: each run does `await io.wait("w", --wait)` then a task that returns
    time.time(); latency = that time - the wait's recorded due_at (its start + --wait). Measured
    over `--wait-runs` runs one after another (sequential) and all queued at once (concurrent).
(b) trigger -> start on an idle worker: `--triggers` triggers spaced by `--spacing` s; the job's
    first line records time.time(); latency = that - the moment `Engine.trigger` returned (its
    commit). Three ways of triggering:
      same Engine      the worker's own Engine: the in-process wake-up (any database)
      other Engine     a separate Engine object (own pool) whose in-process wake-up is switched
                       off: LISTEN/NOTIFY on PostgreSQL; on SQLite the idle poll (0.25 s)
      other process    a subprocess calling Engine.trigger: as above, across processes

    python bench/bench_latency.py [--db sqlite|postgres|both] [--wait-runs 50] [--wait 0.2]
                                  [--triggers 30] [--spacing 0.05]

Targets: (a) median <= 20 ms; (b) median <= 20 ms on PostgreSQL (SQLite cross-process is bounded
by how often the worker checks the file's data_version, every 50 ms).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import common

TARGET_MS = 20.0


def make_wait_job(seconds: float, done: dict[int, asyncio.Future[None]]) -> Any:
    from engine import job

    async def record(task: Any) -> float:
        return time.time()

    @job(common.unique_job_id("wait-latency"))
    async def waits(payload: Any, io: Any, ctx: Any) -> None:
        await io.wait("w", seconds)
        await io.run_task("continue", record)
        future = done.get(payload["i"])
        if future is not None and not future.done():
            future.set_result(None)

    return waits


def make_start_job(started: dict[int, float]) -> Any:
    from engine import job

    @job(common.unique_job_id("start-latency"))
    async def starts(payload: Any, io: Any, ctx: Any) -> None:
        started.setdefault(payload["i"], time.time())

    return starts


async def _wait_latencies(worker: common.Worker, run_ids: list[str]) -> list[float]:
    out = []
    for run_id in run_ids:
        tasks = {t["key"]: t for t in await worker.store.get_tasks(run_id)}
        due = tasks["w"]["due_at"].timestamp()
        out.append(tasks["continue"]["output"] - due)
    return out


async def bench_wait(db: common.BenchDB, args: Any) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    done: dict[int, asyncio.Future[None]] = {}
    job = make_wait_job(args.wait, done)
    worker = common.Worker(db.url)
    await worker.start(job, concurrency=max(50, args.wait_runs))
    out: dict[str, list[float]] = {}
    try:
        ids = []
        for i in range(args.wait_runs + 1):
            done[i] = loop.create_future()
            ids.append(await worker.engine.trigger(job.id, {"i": i}))
            await asyncio.wait_for(done[i], 30)
        await asyncio.sleep(0.05)  # the last finish_run commits after the job returns
        out["sequential"] = (await _wait_latencies(worker, ids))[1:]  # 1st = warm-up
        base = args.wait_runs + 1
        futures = [loop.create_future() for _ in range(args.wait_runs)]
        done.update({base + i: f for i, f in enumerate(futures)})
        ids = await common.create_runs(
            worker.store, job, [{"i": base + i} for i in range(args.wait_runs)]
        )
        await asyncio.wait_for(asyncio.gather(*futures), 60)
        await worker.wait_until(lambda c: c.get("COMPLETED", 0) >= 2 * args.wait_runs + 1, 30)
        out["concurrent"] = await _wait_latencies(worker, ids)
    finally:
        await worker.close()
    return out


async def bench_start(db: common.BenchDB, args: Any) -> dict[str, list[float]]:
    from engine import Engine

    started: dict[int, float] = {}
    job = make_start_job(started)
    worker = common.Worker(db.url)
    await worker.start(job, concurrency=20)
    other = Engine(db.url)
    other.store._wake_local = lambda: None  # no in-process wake: NOTIFY or the idle poll
    out: dict[str, list[float]] = {}
    counter = 0
    try:
        for mode, engine in (("same Engine", worker.engine), ("other Engine", other)):
            returned: dict[int, float] = {}
            for k in range(args.triggers + 1):
                counter += 1
                await engine.trigger(job.id, {"i": counter})
                returned[counter] = time.time()
                if k == 0:
                    await asyncio.sleep(0.5)  # warm-up trigger, not counted
                    continue
                await asyncio.sleep(args.spacing)
            await _settle(started, returned)
            out[mode] = [started[i] - t for i, t in list(returned.items())[1:] if i in started]
        returned = await _child_triggers(db.url, job.id, counter + 1, args)
        await _settle(started, returned)
        out["other process"] = [started[i] - t for i, t in returned.items() if i in started]
    finally:
        await other.close()
        await worker.close()
    return out


async def _settle(started: dict[int, float], returned: dict[int, float]) -> None:
    deadline = time.monotonic() + 10
    while not all(i in started for i in returned) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _child_triggers(url: str, job_id: str, first: int, args: Any) -> dict[int, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child-trigger",
        json.dumps([url, job_id, first, args.triggers, args.spacing]),
        stdout=subprocess.PIPE,
    )
    stdout, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"trigger subprocess exited with {proc.returncode}")
    returned = {}
    for line in stdout.decode().splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            returned[int(item["i"])] = float(item["t"])
    return returned


async def child_trigger(spec: str) -> None:
    from engine import Engine

    url, job_id, first, n, spacing = json.loads(spec)
    async with Engine(url) as engine:
        await engine.upgrade()
        await engine.trigger(job_id, {"i": -1})  # warm-up (connect, prepare)
        await asyncio.sleep(0.5)
        for k in range(n):
            await engine.trigger(job_id, {"i": first + k})
            print(json.dumps({"i": first + k, "t": time.time()}), flush=True)
            await asyncio.sleep(spacing)


def _rows(result: dict[str, list[float]], prefix: str, target: float | None) -> list[Any]:
    rows = []
    for mode, samples in result.items():
        med, _mean, p95 = common.summary_ms(samples)
        verdict = "" if target is None else ("ok" if med <= target else "MISS")
        rows.append(
            (f"{prefix}{mode}", len(samples), med, p95, common.ms(max(samples)), target, verdict)
        )
    return rows


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header("bench_latency", kind)
        async with common.bench_db(kind) as db:
            await db.measure_floor(args.floor_ops)
            wait = await bench_wait(db, args)
            start = await bench_start(db, args)
            await db.measure_floor(args.floor_ops)
            db.print_floor()
            rows = _rows(wait, f"wait {args.wait}s -> continue, ", TARGET_MS)
            for row in _rows(start, "trigger -> start, ", None):
                mode = row[0].rsplit(", ", 1)[1]
                cross = mode != "same Engine"
                if kind == "postgres" or not cross:
                    target: Any = TARGET_MS
                    verdict = "ok" if row[2] <= TARGET_MS else "MISS"
                else:
                    target, verdict = "<=50 (watch)", ""
                rows.append((*row[:5], target, verdict))
            common.table(("latency", "n", "median ms", "p95 ms", "max ms", "target", ""), rows)
            print(f"driver floor {db.driver_floor_ms():.3f} ms\n", flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-trigger":
        asyncio.run(child_trigger(sys.argv[2]))
        sys.exit(0)
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--wait-runs", type=int, default=50)
    p.add_argument("--wait", type=float, default=0.2)
    p.add_argument("--triggers", type=int, default=30)
    p.add_argument("--spacing", type=float, default=0.05)
    asyncio.run(main(p.parse_args()))
