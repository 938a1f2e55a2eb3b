"""Throughput of one worker: `--runs` runs of `--tasks` trivial tasks each, queued up front.

One in-process `Scheduler` (concurrency `--concurrency`, default 50) works through the queue.
The window is from the first claim (min engine_runs.started_at) to the last completion
(max engine_runs.completed_at), both recorded by the engine itself.

The "floor bound" is what the raw driver floor alone would allow if every transaction of a run
(its claim share, one per task, the finish) cost exactly one floor INSERT+COMMIT, serially:
runs/s = 1000 / (floor_ms * (tasks + 2)). Measured / bound is printed as "x bound".

    python bench/bench_throughput.py [--db sqlite|postgres|both] [--runs 1000] [--tasks 10]
                                     [--concurrency 50] [--limit N]

`--limit N` gives the job a concurrency limit of N (`@job(concurrency=N)`): the worker then
claims through the limited claim (docs/flow-control.md); N >= --concurrency measures its cost.

Target: >= 150 runs/s.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import common

TARGET_RUNS_S = 150.0


async def _noop(task: Any) -> int:
    return 1


def make_job(n: int, limit: int | None = None) -> Any:
    from engine import job

    @job(common.unique_job_id("throughput"), concurrency=limit)
    async def tasks(payload: Any, io: Any, ctx: Any) -> int:
        for i in range(n):
            await io.run_task(f"t{i}", _noop)
        return n

    return tasks


async def bench(db: common.BenchDB, args: Any) -> dict[str, Any]:
    from sqlalchemy import text

    job = make_job(args.tasks, args.limit)
    worker = common.Worker(db.url)
    await worker.prepare(job)
    limit = ("", args.limit) if args.limit else None
    await common.create_runs(worker.store, job, [{"i": i} for i in range(args.runs)], limit)
    wall = time.perf_counter()
    cpu = time.process_time()
    with common.StatementCounter(worker.store) as counter:
        await worker.start(job, concurrency=args.concurrency)
        try:
            counts = await worker.wait_until(
                lambda c: c.get("COMPLETED", 0) + c.get("FAILED", 0) >= args.runs,
                timeout=args.timeout,
                every=0.25,
            )
        finally:
            wall = time.perf_counter() - wall
            cpu = time.process_time() - cpu
            await worker.stop()
    async with worker.store.begin() as conn:
        row = (
            await conn.execute(
                text("SELECT MIN(started_at), MAX(completed_at) FROM engine_runs"),
            )
        ).first()
    await worker.close()
    first, last = (_as_ts(v) for v in row)
    window = last - first
    return {
        "window": window,
        "wall": wall,
        "cpu": cpu,
        "counts": counts,
        "commits_per_run": counter.commits / args.runs,
        "stmts_per_run": counter.statements / args.runs,
    }


def _as_ts(value: Any) -> float:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(
            f"bench_throughput ({args.runs} runs x {args.tasks} tasks, "
            f"concurrency {args.concurrency})",
            kind,
        )
        async with common.bench_db(kind) as db:
            r = await db.between_floors(args.floor_ops, bench(db, args))
            floor = db.driver_floor_ms()
            runs_s = args.runs / r["window"]
            tasks_s = runs_s * args.tasks
            bound = 1000.0 / (floor * (args.tasks + 2))
            common.table(
                ("one worker", "runs/s", "tasks/s", "x bound", "target runs/s", "verdict"),
                [
                    (
                        "first claim -> last completion",
                        runs_s,
                        tasks_s,
                        runs_s / bound,
                        TARGET_RUNS_S,
                        "ok" if runs_s >= TARGET_RUNS_S else "MISS",
                    ),
                    ("floor bound (1 floor commit/txn)", bound, bound * args.tasks, 1.0, "", ""),
                ],
            )
            print(
                f"window {r['window']:.2f} s (wall incl. start/stop {r['wall']:.2f} s); "
                f"worker process CPU {r['cpu']:.2f} s = {100 * r['cpu'] / r['wall']:.0f}% "
                "of one core; "
                f"statuses {r['counts']}; per run: {r['commits_per_run']:.2f} commits, "
                f"{r['stmts_per_run']:.2f} SQL statements "
                f"(incl. scheduler claims/next_due)\n",
                flush=True,
            )


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--timeout", type=float, default=100.0)
    p.add_argument("--limit", type=int, default=None, help="the job's concurrency limit")
    asyncio.run(main(p.parse_args()))
