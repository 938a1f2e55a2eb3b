"""Per-call overhead of `io.openai` over the bare `openai.AsyncOpenAI`, against the fake server.

The fake OpenAI server runs in a separate process (`python -m integrations.openai.testing
--port 0`), so its CPU does not share this process's event loop and GIL. In the same run:

    bare    `openai.AsyncOpenAI(max_retries=0)` doing `--calls` (100) sequential
            `chat.completions.create(model="gpt-4o-mini", messages=[...])`
    engine  a job doing the same calls as `io.openai.chat.completions.create(f"c-{i}", ...)`,
            executed by an in-process worker; each call timed inside the job
            (`time.perf_counter` around the `await`)

Each is measured `--repeat` (3) times, alternating which goes first; per repetition the per-call
mean and median are taken, and the median of the repetitions is printed. Overhead = engine -
bare. Each engine call is two commits (the RUNNING row before the request, the COMPLETED row
with the response), so the raw floor (one bare aiosqlite / asyncpg INSERT+COMMIT, measured
before and after) is printed for scale. `--profile` prints a cProfile of one more engine run.

    python bench/bench_openai_overhead.py [--db sqlite|postgres|both] [--calls 100] [--repeat 3]

Target: overhead <= 1 ms per call on SQLite.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

import common
import openai_common

TARGET_MS = 1.0
WARMUP_CALLS = 5


def messages(i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": f"Say the number {i} back to me."},
    ]


def make_job(base_url: str, timings: dict[int, list[float]], done: dict[int, Any]) -> Any:
    from engine import job
    from integrations.openai import OpenAI

    integration = OpenAI(id="openai", api_key=openai_common.API_KEY, base_url=base_url)

    @job(common.unique_job_id("openai-overhead"), integrations={"openai": integration})
    async def chat(payload: Any, io: Any, ctx: Any) -> int:
        durations = []
        for i in range(payload["calls"]):
            t0 = time.perf_counter()
            await io.openai.chat.completions.create(
                f"c-{i}", model="gpt-4o-mini", messages=messages(i)
            )
            durations.append(time.perf_counter() - t0)
        timings[payload["rep"]] = durations
        future = done.get(payload["rep"])
        if future is not None and not future.done():
            future.set_result(None)
        return len(durations)

    return chat


async def bare_calls(client: Any, calls: int) -> list[float]:
    durations = []
    for i in range(calls):
        t0 = time.perf_counter()
        await client.chat.completions.create(model="gpt-4o-mini", messages=messages(i))
        durations.append(time.perf_counter() - t0)
    return durations


class EngineSide:
    """The job, its in-process worker, and how a run's timings come back."""

    def __init__(self, db: common.BenchDB, base_url: str) -> None:
        self.timings: dict[int, list[float]] = {}
        self.done: dict[int, asyncio.Future[None]] = {}
        self.job = make_job(base_url, self.timings, self.done)
        self.worker = common.Worker(db.url)


async def engine_calls(side: EngineSide, rep: int, calls: int) -> list[float]:
    # The job resolves a future when it returns: no polling of the run's status (which would
    # share this event loop with the calls being timed) until the calls are over.
    future = side.done[rep] = asyncio.get_running_loop().create_future()
    run_id = await side.worker.engine.trigger(side.job.id, {"rep": rep, "calls": calls})
    await asyncio.wait_for(future, 120)
    run = await side.worker.engine.wait_for(run_id, timeout=30)
    if run["status"] != "COMPLETED":
        raise RuntimeError(f"run {run_id} ended {run['status']}: {run.get('error')}")
    del side.done[rep]
    return side.timings.pop(rep)


async def bench(db: common.BenchDB, base_url: str, args: Any) -> dict[str, Any]:
    import openai

    side = EngineSide(db, base_url)
    await side.worker.start(side.job, concurrency=4)
    client = openai.AsyncOpenAI(api_key=openai_common.API_KEY, base_url=base_url, max_retries=0)
    out: dict[str, Any] = {"bare": [], "engine": []}
    try:
        # Warm-up: connections, imports, SQL compilation caches, the integration's client.
        await bare_calls(client, WARMUP_CALLS)
        await engine_calls(side, -1, WARMUP_CALLS)
        for rep in range(args.repeat):
            order = ("bare", "engine") if rep % 2 == 0 else ("engine", "bare")
            for which in order:
                if which == "bare":
                    out["bare"].append(await bare_calls(client, args.calls))
                else:
                    out["engine"].append(await engine_calls(side, rep, args.calls))
        if args.profile:
            out["profile"] = await _profile(side, args.calls)
    finally:
        await client.close()
        await side.worker.close()
        for integration in side.job.integrations.values():
            await integration.aclose()
    return out


async def _profile(side: EngineSide, calls: int) -> str:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    await engine_calls(side, 10_000, calls)
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("tottime")
    stats.print_stats(30)
    return text.getvalue()


def _per_rep(reps: list[list[float]]) -> tuple[float, float, list[float], list[float]]:
    """(median over reps of the per-call mean, of the per-call median, the means, the medians)."""
    means = [common.ms(statistics.fmean(r)) for r in reps]
    medians = [common.ms(statistics.median(r)) for r in reps]
    return statistics.median(means), statistics.median(medians), means, medians


async def main(args: Any) -> None:
    server = await openai_common.FakeServer.start()
    try:
        for kind in common.databases(args.db):
            common.header(
                f"bench_openai_overhead ({args.calls} chat.completions.create x {args.repeat})",
                kind,
            )
            async with common.bench_db(kind) as db:
                await db.measure_floor(args.floor_ops)
                fake_cpu0 = server.pid_cpu_seconds()
                r = await bench(db, server.base_url, args)
                fake_cpu = server.pid_cpu_seconds() - fake_cpu0
                await db.measure_floor(args.floor_ops)
                db.print_floor()
                _report(db, r, args, fake_cpu)
                if "profile" in r:
                    print("cProfile of one more engine run (sorted by own time):")
                    print(r["profile"], flush=True)
    finally:
        await server.stop()


def _report(db: common.BenchDB, r: dict[str, Any], args: Any, fake_cpu: float) -> None:
    floor = db.driver_floor_ms()
    bare_mean, bare_med, bare_means, bare_meds = _per_rep(r["bare"])
    eng_mean, eng_med, eng_means, eng_meds = _per_rep(r["engine"])
    over_means = [e - b for e, b in zip(eng_means, bare_means, strict=True)]
    over_meds = [e - b for e, b in zip(eng_meds, bare_meds, strict=True)]
    over_mean = statistics.median(over_means)
    over_med = statistics.median(over_meds)
    target = TARGET_MS if db.kind == "sqlite" else "-"
    verdict = ""
    if db.kind == "sqlite":
        verdict = "ok" if over_med <= TARGET_MS else "MISS"

    def per(values: list[float]) -> str:
        return "/".join(f"{v:.3f}" for v in values)

    rows = [
        ("bare AsyncOpenAI", bare_mean, bare_med, per(bare_meds), "", "", ""),
        ("engine io.openai", eng_mean, eng_med, per(eng_meds), "", "", ""),
        (
            "overhead (engine - bare)",
            over_mean,
            over_med,
            per(over_meds),
            over_med / floor,
            target,
            verdict,
        ),
        ("raw floor (driver INSERT+COMMIT)", floor, floor, "", 1.0, "", ""),
    ]
    common.table(
        ("per call", "mean ms", "median ms", "median per rep", "x floor", "target ms", ""),
        rows,
        title=f"median of {args.repeat} repetitions of {args.calls} sequential calls",
    )
    print(
        f"fake server CPU {fake_cpu:.1f} s in total (separate process)\n",
        flush=True,
    )


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(db="sqlite")
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--profile", action="store_true", help="cProfile one more engine run")
    sys.exit(asyncio.run(main(p.parse_args())))
