"""The shared rate limiter (engine.ratelimit): a fleet under a provider's limit, and its cost.

Part 1, the fleet: `--workers` (3) `engine run` processes execute `--runs` (1,000; times
`--scale`) runs of `--calls` (5) chat calls each, all queued at once, under `OpenAI(limits=
RateLimit(requests=--rpm, per="minute"))`, against the fake OpenAI server limited to the same
`--rpm` (600) requests per minute, enforced over `--burst-seconds` (1: a bucket holding one
second's worth, 10 requests, as OpenAI says it may enforce a per-minute limit). From the time
each request reached the fake: the most requests in any window of 60 s, 10 s and 1 s (against
the limit's share of that window), the fake's 429 count, and the total time (first request ->
last) against the limit-bound ideal ((calls - 1) / rate).

Part 2, the overhead per call: an in-process worker runs one job making `--overhead-calls`
(300) sequential `io.run_task` calls, with `rate_limit=` a limit so high it never waits, and
without; each call timed inside the job. Overhead = limited - plain (median of `--repeat` (3)
alternating repetitions). Such a limit is reserved in batches (one statement per 100 calls);
a limit under 40 requests/s reserves each call's place on its own: the last rows time one
such reservation directly, as sent (one autocommitted statement, one trip) and, alternated
with it, the same upsert in a transaction of its own (BEGIN, upsert, COMMIT: as it was sent
before).

    python bench/bench_ratelimit.py [--db sqlite|postgres|both] [--runs 1000] [--scale 1]
        [--calls 5] [--workers 3] [--rpm 600] [--burst-seconds 1] [--overhead-calls 300]
        [--repeat 3] [--skip-fleet] [--skip-overhead] [--worker-logs DIR]

Targets: requests per minute never above --rpm, zero 429s, total time within 5% of the ideal;
overhead <= 0.2 ms per call. 1,000 x 5 at 600/min takes 8+ minutes; `--scale 0.1` about 1.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import IO, Any

import common
import openai_common

HERE = Path(__file__).resolve().parent
ROUTE = "POST /v1/chat/completions"
TARGET_OVERHEAD_MS = 0.2


async def fleet(url: str, args: Any) -> None:
    from engine import Engine

    # The fake enforces the limit over --burst-seconds (1 s: 10 a second for 600 a minute), as
    # OpenAI says it may: a fleet bunching its requests is refused though it keeps to the minute.
    fake = await openai_common.FakeServer.start(
        requests_per_minute=args.rpm, burst_seconds=args.burst_seconds
    )
    env = {
        **os.environ,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": openai_common.API_KEY,
        "BENCH_RPM": str(args.rpm),
        "BENCH_CALLS": str(args.calls),
        "PYTHONPATH": str(common.ROOT),
    }
    engine_cli = str(Path(sys.executable).parent / "engine")
    workers: list[asyncio.subprocess.Process] = []
    logs = []
    try:
        async with Engine(url) as engine:
            await engine.upgrade()
            for i in range(args.workers):
                # --worker-logs: each worker's debug log (the limiter says each place missed).
                log = _log_file(args.worker_logs, i)
                logs += [log] if log else []
                level = ["--log-level", "debug"] if log else []
                workers.append(
                    await asyncio.create_subprocess_exec(
                        engine_cli, "run", str(HERE / "ratelimit_app.py"), "--database-url",
                        url, "--concurrency", "50", *level, env=env,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=log or asyncio.subprocess.DEVNULL,
                    )
                )  # fmt: skip
            await _registered(engine)
            started = time.time()
            ids = [await engine.trigger("bench-rate-limited", {}) for _ in range(args.runs)]
            queued = time.time()
            ideal = (args.runs * args.calls - 1) * 60.0 / args.rpm
            for run_id in ids:
                await engine.wait_for(run_id, ideal * 3 + 300)
            done = time.time()
            statuses = [(await engine.get_run(r))["status"] for r in ids]
            # Where the limiter's next place is: every place taken, sent or missed.
            async with engine.store.begin() as conn:
                from sqlalchemy import text

                (next_place,) = (
                    await conn.execute(text("SELECT requests_tat FROM engine_rate_limits"))
                ).one()
        requests = [r for r in await fake.requests() if r["route"] == ROUTE]
        stats = await asyncio.to_thread(fake._admin, "GET", "concurrency")
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            await w.wait()
        for log in logs:
            log.close()
        await fake.stop()

    at = sorted(float(r["at"]) for r in requests)
    if args.dump:
        await asyncio.to_thread(Path(args.dump).write_text, json.dumps(at))
    rate = args.rpm / 60.0
    rows = []
    for window in (60.0, 10.0, 1.0):
        most = _most_in_window(at, window)
        rows.append((f"{window:g} s", most, f"{rate * window:g}", "ok" if most <= rate * window
                     else "OVER"))  # fmt: skip
    common.table(("window", "most requests", "limit's share", ""), rows,
                 title=f"{args.runs} runs x {args.calls} calls, {args.workers} workers, "
                       f"{args.rpm}/min")  # fmt: skip
    span = at[-1] - at[0] if at else 0.0
    # Places taken from the first request on (the limiter's clock is the database's, the
    # same machine's here): more than the requests by the places missed and given up.
    taken = round((float(next_place) - at[0]) * rate) if at else 0
    ideal = (len(at) - 1) / rate  # the warm-up run's calls included
    common.table(
        ("requests", "places taken", "429s", "completed", "queue s", "first->last s", "ideal s",
         "vs ideal", "trigger->done s"),
        [(len(at), taken, stats["rate_limited"], statuses.count("COMPLETED"),
          f"{queued - started:.1f}",
          f"{span:.1f}", f"{ideal:.1f}", f"{(span / ideal - 1) * 100 if ideal else 0:+.1f}%",
          f"{done - started:.1f}")],
    )  # fmt: skip


def _log_file(directory: str | None, worker: int) -> IO[str] | None:
    """Worker `worker`'s log file in `directory` (closed by the caller), or None."""
    if not directory:
        return None
    return (Path(directory) / f"worker-{worker}.log").open("w")


async def _registered(engine: Any) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            await engine.trigger("bench-rate-limited", {}, idempotency_key="bench-warm-up")
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise RuntimeError("the workers did not register the job within 180 s")


def _most_in_window(times: list[float], window: float) -> int:
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


async def overhead(url: str, args: Any) -> None:
    from engine import RateLimit, job, rate_limits

    rate_limits({"bench-unbounded": RateLimit(requests=1_000_000_000, per="second")})
    timings: dict[str, list[float]] = {}

    async def nothing(task: Any) -> int:
        return 1

    @job(common.unique_job_id("ratelimit-overhead"))
    async def calls(payload: Any, io: Any, ctx: Any) -> int:
        limit = payload["limit"]
        durations = []
        for i in range(payload["calls"]):
            t0 = time.perf_counter()
            await io.run_task(f"c-{i}", nothing, rate_limit=limit)
            durations.append(time.perf_counter() - t0)
        timings[payload["name"]] = durations
        return len(durations)

    worker = common.Worker(url)
    await worker.start(calls)
    try:
        medians: dict[str, list[float]] = {"plain": [], "limited": []}
        for rep in range(args.repeat):
            order = ["plain", "limited"] if rep % 2 == 0 else ["limited", "plain"]
            for kind in order:
                name = f"{kind}-{rep}"
                payload = {"calls": args.overhead_calls, "name": name,
                           "limit": "bench-unbounded" if kind == "limited" else None}  # fmt: skip
                run_id = await worker.engine.trigger(calls.id, payload)
                await worker.engine.wait_for(run_id, 600)
                medians[kind].append(statistics.median(timings[name]))
        # A limit under 40 requests/s reserves one place per call: one statement each, sent
        # on its own (autocommit). Alternated with the same statement in a transaction of its
        # own (BEGIN, statement, COMMIT: how it was sent before), so both see the same load.
        from engine.ratelimit import reserve

        single = RateLimit(requests=1_000_000_000, per="second")
        trips: dict[str, list[float]] = {"one trip": [], "in a transaction": []}
        for i in range(args.overhead_calls * 2):
            kind = "one trip" if i % 2 else "in a transaction"
            t0 = time.perf_counter()
            if kind == "one trip":
                await reserve(worker.store, "bench-single", single, 0)
            else:
                await _reserve_in_transaction(worker.store, "bench-single", single)
            trips[kind].append(time.perf_counter() - t0)
    finally:
        await worker.close()
    plain, limited = (statistics.median(medians[k]) for k in ("plain", "limited"))
    extra = common.ms(limited - plain)
    rows = [("no limit", common.ms(plain), "", "", ""),
            ("rate_limit=", common.ms(limited), extra, TARGET_OVERHEAD_MS,
             "ok" if extra <= TARGET_OVERHEAD_MS else "OVER")]  # fmt: skip
    for kind, times in trips.items():
        trip = common.ms(statistics.median(times))
        rows.append((f"one reservation, {kind}", trip, trip, TARGET_OVERHEAD_MS,
                     "ok" if trip <= TARGET_OVERHEAD_MS else "OVER"))  # fmt: skip
    common.table(("per io.run_task call", "median ms", "overhead ms", "target ms", ""), rows)


async def _reserve_in_transaction(store: Any, name: str, limit: Any) -> None:
    """The reservation as it was sent before: BEGIN, the upsert, COMMIT through SQLAlchemy."""
    from engine import ratelimit

    sql = ratelimit._statement(ratelimit._RESERVE, store.is_postgres)
    values = {"name": name, "ri": limit.request_interval, "ti": 0.0}
    async with store.begin() as conn:
        if store.is_postgres:
            await conn.exec_driver_sql(sql.text, tuple(values[n] for n in sql.names))
        else:
            await conn.exec_driver_sql(sql.text, values)


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header("bench_ratelimit", kind)
        if not args.skip_fleet:
            async with common.bench_db(kind) as db:
                await fleet(db.url, args)
        if not args.skip_overhead:
            async with common.bench_db(kind) as db:
                await db.between_floors(args.floor_ops, overhead(db.url, args))


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies --runs (0.1: 100 runs)")
    p.add_argument("--burst-seconds", type=float, default=1.0,
                   help="the fake's bucket holds this many seconds of the limit")  # fmt: skip
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--rpm", type=int, default=600)
    p.add_argument("--overhead-calls", type=int, default=300)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--skip-fleet", action="store_true")
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--worker-logs", help="a directory for each worker's debug log")
    p.add_argument("--dump", help="write the fake's request times (JSON) to this file")
    parsed = p.parse_args()
    parsed.runs = max(1, round(parsed.runs * parsed.scale))
    common.run_main(main, parsed)
