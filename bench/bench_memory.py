"""Worker memory with `--runs` runs (default 10,000) waiting: suspended in `io.wait("w", 3600)`
(`--wait-for sleep`), suspended for a place under a rate limit of one call an hour
(`--wait-for rate-limit`), or queued behind a concurrency limit of 1 held by a run that never
ends (`--wait-for concurrency`).

The worker is a subprocess (this file with --child): an `Engine` plus a `Scheduler`
(concurrency `--concurrency`) with the job loaded. It reports its VmRSS/VmHWM from
/proc/self/status after gc.collect() when asked:

    cold     idle, job loaded, nothing executed yet
    warm     after one warm-up run has executed and suspended (imports, SQL caches warm)
    after    after every run has executed and is WAITING (the worker idle again)

The parent queues the runs in one transaction and waits until all of them are WAITING.
Growth = after - warm (after - cold is printed too).

    python bench/bench_memory.py [--db sqlite|postgres|both] [--runs 10000] [--concurrency 100]
        [--wait-for sleep|rate-limit|concurrency]

Target: growth <= 20 MB.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import common

TARGET_MB = 20.0


HOURLY = "bench-memory-hourly"


def make_job(job_id: str, wait_for: str = "sleep") -> Any:
    from engine import RateLimit, job, rate_limits

    async def _step(task: Any) -> int:
        return 1

    if wait_for == "rate-limit":
        rate_limits({HOURLY: RateLimit(requests=1, per="hour")})

        @job(job_id)
        async def limited(payload: Any, io: Any, ctx: Any) -> None:
            await io.run_task("before", _step)
            await io.run_task("call", _step, rate_limit=HOURLY)

        return limited
    if wait_for == "concurrency":

        @job(job_id, concurrency=1)
        async def one_at_a_time(payload: Any, io: Any, ctx: Any) -> None:
            await asyncio.Event().wait()  # holds the only slot: every other run stays QUEUED

        return one_at_a_time

    @job(job_id)
    async def suspended(payload: Any, io: Any, ctx: Any) -> None:
        await io.run_task("before", _step)
        await io.wait("w", 3600)

    return suspended


# What the runs look like once they all wait, after the warm-up run (and their own).
_WARM = {
    "sleep": lambda c: c.get("WAITING", 0) >= 1,
    "rate-limit": lambda c: c.get("COMPLETED", 0) >= 1,  # it took the hour's place
    "concurrency": lambda c: c.get("RUNNING", 0) >= 1,  # it holds the slot
}


def _all_waiting(wait_for: str, runs: int) -> Any:
    if wait_for == "concurrency":
        return lambda c: c.get("QUEUED", 0) >= runs
    return lambda c: c.get("WAITING", 0) >= runs + (wait_for == "sleep")


async def child(spec: str) -> None:
    url, job_id, concurrency, wait_for = json.loads(spec)
    job = make_job(job_id, wait_for)
    worker = common.Worker(url)
    await worker.start(job, concurrency=concurrency)

    def active() -> dict[str, Any]:
        return {"active": len(worker.scheduler.active) if worker.scheduler else -1}

    await common.serve_rss(worker, active)


async def bench(db: common.BenchDB, args: Any) -> dict[str, Any]:
    job = make_job(common.unique_job_id("memory"), args.wait_for)
    parent = common.Worker(db.url)
    await parent.prepare(job)
    worker = await common.Child.start(__file__, [db.url, job.id, args.concurrency, args.wait_for])
    out: dict[str, Any] = {}
    try:
        out["cold"] = dict(await worker.ask("rss"))
        # A job-wide limit is stored with the key "" (engine.flow.key_of).
        slot = ("", 1) if args.wait_for == "concurrency" else None
        await common.create_runs(parent.store, job, [{"i": -1}], slot)
        await parent.wait_until(_WARM[args.wait_for], 30, every=0.05)
        out["warm"] = dict(await worker.ask("rss"))
        t0 = time.perf_counter()
        await common.create_runs(parent.store, job, [{"i": i} for i in range(args.runs)], slot)
        counts = await parent.wait_until(
            _all_waiting(args.wait_for, args.runs), args.timeout, every=0.5
        )
        out["seconds"] = time.perf_counter() - t0
        out["after"] = dict(await worker.ask("rss"))
        out["counts"] = counts
        if args.wait_for == "concurrency":
            pass  # its run never ends, so the worker cannot drain: killed below
        else:
            await worker.stop()
    finally:
        await worker.kill()
        await parent.close()
    return out


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(f"bench_memory ({args.runs} runs waiting: {args.wait_for})", kind)
        async with common.bench_db(kind) as db:
            r = await db.between_floors(args.floor_ops, bench(db, args))
            warm = r["warm"]["rss"] / 1024
            growth = r["after"]["rss"] / 1024 - warm
            rows = [
                ("idle, job loaded (cold)", r["cold"]["rss"] / 1024, r["cold"]["hwm"] / 1024, ""),
                ("after 1 warm-up run", warm, r["warm"]["hwm"] / 1024, ""),
                (
                    f"after {args.runs} runs WAITING",
                    r["after"]["rss"] / 1024,
                    r["after"]["hwm"] / 1024,
                    "",
                ),
                ("growth (after - warm)", growth, "", "ok" if growth <= TARGET_MB else "MISS"),
                (
                    "growth (after - cold)",
                    r["after"]["rss"] / 1024 - r["cold"]["rss"] / 1024,
                    "",
                    "",
                ),
            ]
            common.table(("worker RSS", "VmRSS MB", "VmHWM MB", f"target <= {TARGET_MB} MB"), rows)
            print(
                f"{args.runs} runs executed to WAITING in {r['seconds']:.1f} s "
                f"({args.runs / r['seconds']:.0f} runs/s); statuses {r['counts']}; "
                f"per run {growth * 1024 * 1024 / args.runs:.0f} bytes retained; "
                f"driver floor {db.driver_floor_ms():.3f} ms\n",
                flush=True,
            )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[2]))
        sys.exit(0)
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--timeout", type=float, default=110.0)
    p.add_argument("--wait-for", choices=sorted(_WARM), default="sleep")
    asyncio.run(main(p.parse_args()))
