"""Replay: resuming a run whose log holds `--tasks` completed tasks (default 1,000).

The job runs `--tasks` trivial tasks, then `io.wait("w", 3600)`, then a task "after". The first
execution records everything up to the wait and suspends. The engine clock is then advanced
past the wait, and the run is claimed (`store.claim_runs`) and executed (`executor.execute`)
directly; timestamps (time.perf_counter) split the resume into:

    claim        claim_runs() returning the run
    load+start   Replay.load (one SELECT of every task and log key) until the job's first line
    replay       the job replaying the cached tasks (no SQL)
    to next task from the claim call until the "after" task's function starts (this includes
                 the wait's COMPLETED write, one commit)

    python bench/bench_replay.py [--db sqlite|postgres|both] [--tasks 1000] [--repeat 5]

Target: <= 20 ms from claim to the next new task.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import common

TARGET_MS = 20.0


async def _noop(task: Any) -> int:
    return 1


def make_job(n: int, marks: dict[str, float]) -> Any:
    from engine import job

    async def after(task: Any) -> int:
        marks["after"] = time.perf_counter()
        return 2

    @job(common.unique_job_id("replay"))
    async def replayed(payload: Any, io: Any, ctx: Any) -> int:
        marks["start"] = time.perf_counter()
        for i in range(n):
            await io.run_task(f"t{i}", _noop)
        marks["replayed"] = time.perf_counter()
        await io.wait("w", 3600)
        await io.run_task("after", after)
        return n

    return replayed


async def bench(db: common.BenchDB, args: Any) -> dict[str, list[float]]:
    from engine import clock
    from engine.executor import execute

    marks: dict[str, float] = {}
    job = make_job(args.tasks, marks)
    worker = common.Worker(db.url)
    await worker.prepare(job)
    store = worker.store
    out: dict[str, list[float]] = {
        k: [] for k in ("claim", "load", "replay", "to_next", "execute", "first")
    }
    try:
        for _ in range(args.repeat):
            await common.create_runs(store, job, [None])
            (claimed,) = await store.claim_runs("bench", 1, 300, [job.key])
            t0 = time.perf_counter()
            outcome = await execute(store, job, claimed, "bench")
            out["first"].append(time.perf_counter() - t0)
            assert outcome.status == "WAITING", outcome
            clock.advance(3601)
            marks.clear()
            t0 = time.perf_counter()
            (claimed,) = await store.claim_runs("bench", 1, 300, [job.key])
            t1 = time.perf_counter()
            outcome = await execute(store, job, claimed, "bench")
            t2 = time.perf_counter()
            assert outcome.status == "COMPLETED", outcome
            out["claim"].append(t1 - t0)
            out["load"].append(marks["start"] - t1)
            out["replay"].append(marks["replayed"] - marks["start"])
            out["to_next"].append(marks["after"] - t0)
            out["execute"].append(t2 - t0)
    finally:
        clock.reset()
        await worker.close()
    return out


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(f"bench_replay ({args.tasks} cached tasks x {args.repeat} runs)", kind)
        async with common.bench_db(kind) as db:
            result = await db.between_floors(args.floor_ops, bench(db, args))
            floor = db.driver_floor_ms()

            def row(
                label: str, key: str, target: Any = "", result: Any = result, floor: float = floor
            ) -> tuple[Any, ...]:
                med = common.ms(statistics.median(result[key]))
                verdict = "" if target == "" else ("ok" if med <= target else "MISS")
                return (
                    label,
                    med,
                    common.ms(min(result[key])),
                    common.ms(max(result[key])),
                    med / floor,
                    target,
                    verdict,
                )

            common.table(
                ("resume of a run", "median ms", "min ms", "max ms", "x floor", "target", ""),
                [
                    row("claim_runs", "claim"),
                    row("Replay.load + job start", "load"),
                    row(f"replay {args.tasks} cached tasks", "replay"),
                    row("claim -> next new task", "to_next", TARGET_MS),
                    row("whole resume (to COMPLETED)", "execute"),
                    row(f"(1st execution, {args.tasks} writes)", "first"),
                ],
            )
            per_task = statistics.median(result["replay"]) / args.tasks * 1e6
            print(f"replay cost per cached task: {per_task:.1f} us\n", flush=True)


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=5)
    asyncio.run(main(p.parse_args()))
