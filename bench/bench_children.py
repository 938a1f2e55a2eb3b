"""Child runs: `--children` (default 1,000) fanned out from one parent with `io.invoke`, and the
parent's replay of that many invokes.

The parent gathers `--children` invokes of a trivial child job, then waits (`io.wait`) several
times. One in-process worker (`--concurrency`, default 20) runs the fan-out to its end:

    fan-out          trigger -> every child COMPLETED and the parent past its gather
    create           parent's first line -> all children committed (one transaction)
    parent runs      how many times the parent was executed meanwhile (woken by children)

The worker is then stopped and the parent resumed `--repeat` times directly (clock advanced
past each wait, claimed and executed as in bench_replay):

    replay           the parent replaying its invokes (no SQL), per resume: through the gather
                     that started them, and (every other resume) awaited one by one
    replay CPU       the gather replay's CPU time in the executing thread: the figure to
                     compare on a loaded machine (wall time there follows the neighbours)
    claim -> park    from the claim until the parent is suspended again

and, for comparison in the same run, bench_replay's replay of as many cached `run_task`s.

    python bench/bench_children.py [--db sqlite|postgres|both] [--children 1000] [--repeat 6]
                                   [--profile N]   # cProfile of the gather resumes, top N

Target: the replay of 1,000 invokes within the budget of 1,000 cached tasks (20 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import time
from typing import Any

import bench_replay
import common

TARGET_MS = 20.0


def make_jobs(n: int, waits: int, marks: dict[str, Any]) -> tuple[Any, Any]:
    from engine import job

    @job(common.unique_job_id("child"))
    async def child(payload: Any, io: Any, ctx: Any) -> int:
        return int(payload["i"]) * 2

    @job(common.unique_job_id("parent"))
    async def parent(payload: Any, io: Any, ctx: Any) -> int:
        marks["executions"] += 1
        marks["start"] = time.perf_counter()
        marks["start_cpu"] = time.thread_time()
        if marks.get("sequential"):
            # A replay finds each invoke by its key however it is awaited: this measures the
            # invokes themselves, without the gather's n asyncio tasks.
            results = [await io.invoke(f"c{i}", child.id, {"i": i}) for i in range(n)]
        else:
            results = await asyncio.gather(
                *(io.invoke(f"c{i}", child.id, {"i": i}) for i in range(n))
            )
        marks["replayed"] = time.perf_counter()
        marks["replayed_cpu"] = time.thread_time()
        assert results == [i * 2 for i in range(n)]
        for w in range(waits):
            await io.wait(f"w{w}", 3600)
        return n

    return parent, child


async def _children_created(store: Any, parent_id: str, n: int, marks: dict[str, Any]) -> None:
    from sqlalchemy import text

    while True:
        async with store.begin() as conn:
            count = (
                await conn.execute(
                    text("SELECT COUNT(*) FROM engine_runs WHERE parent_run_id = :p"),
                    {"p": parent_id},
                )
            ).scalar()
        if count == n:
            marks["created"] = time.perf_counter()
            return
        await asyncio.sleep(0.002)


async def bench(db: common.BenchDB, args: Any) -> dict[str, Any]:
    from engine import clock
    from engine.executor import execute

    marks: dict[str, Any] = {"executions": 0}
    parent, child = make_jobs(args.children, args.repeat, marks)
    # Sized like `engine run` sizes its pool (concurrency + 5); PostgreSQL may be shared.
    worker = common.Worker(db.url, pool_size=args.concurrency + 5)
    await worker.start(parent, child, concurrency=args.concurrency)
    store = worker.store
    out: dict[str, Any] = {"replay": [], "replay_cpu": [], "to_park": [], "sequential": []}
    profile = cProfile.Profile() if args.profile else None
    try:
        t0 = time.perf_counter()
        (parent_id,) = await common.create_runs(store, parent, [None])
        created = asyncio.ensure_future(_children_created(store, parent_id, args.children, marks))
        while True:
            async with store.begin() as conn:
                from sqlalchemy import text

                waiting = (
                    await conn.execute(
                        text("SELECT COUNT(*) FROM engine_tasks WHERE run_id = :p AND key = 'w0'"),
                        {"p": parent_id},
                    )
                ).scalar()
            if waiting:
                break
            await asyncio.sleep(0.01)
        out["fan_out"] = time.perf_counter() - t0
        await created
        out["create"] = marks["created"] - t0
        out["executions"] = marks["executions"]
        await worker.stop()
        for n in range(args.repeat):
            marks["sequential"] = n % 2 == 1
            clock.advance(3601)
            marks.pop("replayed", None)
            t0 = time.perf_counter()
            (claimed,) = await store.claim_runs("bench", 1, 300, [parent.key])
            if profile is not None and not marks["sequential"]:
                profile.enable()
            outcome = await execute(store, parent, claimed, "bench")
            if profile is not None:
                profile.disable()
            elapsed = marks["replayed"] - marks["start"]
            if marks["sequential"]:
                out["sequential"].append(elapsed)
            else:
                out["to_park"].append(time.perf_counter() - t0)
                out["replay"].append(elapsed)
                out["replay_cpu"].append(marks["replayed_cpu"] - marks["start_cpu"])
            assert outcome.status in ("WAITING", "COMPLETED"), outcome
    finally:
        clock.reset()
        await worker.close()
    if profile is not None:
        # The gather resumes (claim to parked again): where the time goes, by own time.
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    return out


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(
            f"bench_children ({args.children} children from one parent, {args.repeat} resumes)",
            kind,
        )
        async with common.bench_db(kind) as db:
            result = await db.between_floors(args.floor_ops, bench(db, args))
            tasks = argparse.Namespace(tasks=args.children, repeat=args.repeat)
            cached = await bench_replay.bench(db, tasks)
            replay = common.ms(statistics.median(result["replay"]))
            same = common.ms(statistics.median(cached["replay"]))
            common.table(
                ("child runs", "value", "target", ""),
                [
                    (f"fan-out of {args.children} children, trigger -> done (s)",
                     round(result["fan_out"], 2), "", ""),
                    ("  all children created after (s)", round(result["create"], 3), "", ""),
                    ("  parent executions meanwhile", result["executions"], "", ""),
                    (f"replay of {args.children} invokes (median ms)", replay, TARGET_MS,
                     "ok" if replay <= TARGET_MS else "MISS"),
                    ("  CPU time of that replay, this thread (median ms)",
                     common.ms(statistics.median(result["replay_cpu"])), "", ""),
                    (f"  the same {args.children} invokes awaited one by one (median ms)",
                     common.ms(statistics.median(result["sequential"])), TARGET_MS, ""),
                    ("  claim -> parked again, gather (median ms)",
                     common.ms(statistics.median(result["to_park"])), "", ""),
                    (f"replay of {args.children} cached run_tasks, bench_replay (median ms)",
                     same, TARGET_MS, ""),
                    ("invokes / run_tasks replay ratio", round(replay / same, 2), "", ""),
                ],
            )  # fmt: skip


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--children", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=20, help="the worker's --concurrency")
    p.add_argument("--repeat", type=int, default=6, help="resumes (alternately gather/loop)")
    p.add_argument(
        "--profile", type=int, default=0, metavar="N",
        help="cProfile the gather resumes and print the N entries with the most own time",
    )  # fmt: skip
    asyncio.run(main(p.parse_args()))
