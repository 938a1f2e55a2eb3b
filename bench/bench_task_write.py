"""Overhead of one completed `io.run_task` on its first execution.

A job runs `--tasks` sequential trivial tasks (default 1,000) in one execution; the time from
the first task's call to the last task's return, divided by the number of tasks, is measured
inside the job with time.perf_counter (nothing subtracted). Repeated `--repeat` times (one run
each); the median run is reported, with the per-task median/p95 over every task of every run.

    python bench/bench_task_write.py [--db sqlite|postgres|both] [--tasks 1000] [--repeat 3]
                                     [--profile]

Targets: <= 0.3 ms/task on SQLite, <= 1.0 ms/task on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import cProfile
import io as _io
import pstats
import statistics
import time
from typing import Any

import common

TARGET_MS = {"sqlite": 0.3, "postgres": 1.0}


async def _noop(task: Any) -> int:
    return 1


def make_job(n: int, results: list[dict[str, Any]]) -> Any:
    from engine import job

    @job(common.unique_job_id("task-write"))
    async def write_tasks(payload: Any, io: Any, ctx: Any) -> int:
        per_task: list[float] = []
        perf = time.perf_counter
        start = perf()
        for i in range(n):
            t0 = perf()
            await io.run_task(f"t{i}", _noop)
            per_task.append(perf() - t0)
        results.append({"total": perf() - start, "per_task": per_task})
        return n

    return write_tasks


async def bench(db: common.BenchDB, args: Any) -> dict[str, Any]:
    from engine.executor import execute

    results: list[dict[str, Any]] = []
    job = make_job(args.tasks, results)
    worker = common.Worker(db.url)
    await worker.prepare(job)
    store = worker.store
    counts = []
    profile = cProfile.Profile() if args.profile else None
    try:
        for _ in range(args.repeat):
            # Claim and execute directly, as the scheduler would, with nothing else running.
            await common.create_runs(store, job, [None])
            (claimed,) = await store.claim_runs("bench", 1, 300, [job.key])
            with common.StatementCounter(store) as counter:
                if profile is not None:
                    profile.enable()
                outcome = await execute(store, job, claimed, "bench")
                if profile is not None:
                    profile.disable()
            assert outcome.status == "COMPLETED", outcome
            counts.append((counter.statements, counter.commits))
    finally:
        await worker.close()
    totals = [r["total"] / args.tasks for r in results]
    per_task = [t for r in results for t in r["per_task"]]
    med_run = statistics.median(totals)
    first = [r["per_task"][0] for r in results]
    stmts, commits = counts[len(counts) // 2]
    out = {
        "ms_per_task": common.ms(med_run),
        "best_ms": common.ms(min(totals)),
        "task_median": common.ms(statistics.median(per_task)),
        "task_p95": common.ms(common.pct(per_task, 95)),
        "first_task_ms": common.ms(statistics.median(first)),
        "stmts_per_task": stmts / args.tasks,
        "commits_per_task": commits / args.tasks,
        "runs": [common.ms(t) for t in totals],
    }
    if profile is not None:
        buf = _io.StringIO()
        stats = pstats.Stats(profile, stream=buf).sort_stats("tottime")
        stats.print_stats(args.profile_lines)
        out["profile"] = buf.getvalue()
    return out


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(f"bench_task_write ({args.tasks} tasks x {args.repeat} runs)", kind)
        async with common.bench_db(kind) as db:
            result = await db.between_floors(args.floor_ops, bench(db, args))
            floor = db.driver_floor_ms()
            target = TARGET_MS[kind]
            common.table(
                ("io.run_task, 1st execution", "ms", "x floor", "target ms", "verdict"),
                [
                    (
                        "per task (median run)",
                        result["ms_per_task"],
                        result["ms_per_task"] / floor,
                        target,
                        "ok" if result["ms_per_task"] <= target else "MISS",
                    ),
                    ("per task (best run)", result["best_ms"], result["best_ms"] / floor, "", ""),
                    ("single task median", result["task_median"], "", "", ""),
                    ("single task p95", result["task_p95"], "", "", ""),
                    ("first task of a run", result["first_task_ms"], "", "", ""),
                    ("driver floor", floor, 1.0, "", ""),
                ],
            )
            print(
                f"runs (ms/task): {', '.join(f'{t:.3f}' for t in result['runs'])}; "
                f"SQL statements/task {result['stmts_per_task']:.2f}, "
                f"commits/task {result['commits_per_task']:.2f}\n",
                flush=True,
            )
            if "profile" in result:
                print(result["profile"])


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="cProfile the executions (slower)")
    p.add_argument("--profile-lines", type=int, default=25)
    asyncio.run(main(p.parse_args()))
