"""`--runs` (1,000) runs at once, each waiting on an assistant run through `io.openai`.

Each run does `await io.openai.beta.threads.runs.create_and_wait_for_completion("run",
thread_id, assistant_id=...)` then a task returning `time.time()` (the job continuing). One
assistant and a thread per run are created up front with the bare client. The fake OpenAI
servers run in separate processes; the integration polls every `--poll-interval` (0.5 s),
growing 1.5x per poll up to `--max-poll-interval` (2 s).

The worker is a subprocess (this file with --child): `engine.Worker` (what `engine run` runs,
`--concurrency` 20 run slots, 50 poll slots) with two jobs loaded, that reports its VmRSS/VmHWM
from /proc/self/status after gc.collect() when asked, and samples VmRSS every 0.25 s.

Phase 1, memory and steady polling: `--runs` runs against a fake whose assistant runs take
`--hold-seconds` (3600), so that every run gets suspended on its poll at once. RSS:

    cold       idle, jobs loaded, nothing executed yet
    warm       after one warm-up run went through create, polls, completion and resume
    suspended  once every run is WAITING on its poll (0.5 s later, after gc.collect())
    steady     after `--steady-seconds` (5) more of polling them all

and the polls the fake received per second over those `--steady-seconds`, against what the
backoff schedule asks for (every run's ideal poll times; `--runs` / `--max-poll-interval` once
all are at the cap). The runs are then canceled.

Phase 2, delay: `--runs` runs against a fake whose runs take `--run-seconds` (5), all queued at
once. Per second: the `GET /v1/threads/{thread_id}/runs/{run_id}` the fake received vs what
the schedule asks for (each run's ideal poll times, from its poll task's start, up to the first
one after its fake run completed). Delay = fake run completed (its create request's arrival +
run-seconds) -> the job continuing (the task's `time.time()`), split into completed -> the poll
that saw it (bounded by the schedule; the ideal schedule's figure is printed beside it) and
that poll -> the job continuing (the engine's resume).

    python bench/bench_openai_waits.py [--db sqlite|postgres|both] [--runs 1000]
        [--run-seconds 5] [--poll-interval 0.5] [--max-poll-interval 2] [--concurrency 20]

Targets: RSS growth (suspended - warm) <= 20 MB; delay median <= the poll interval in effect
when the fake run completed + 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import common
import openai_common

TARGET_MB = 20.0
TARGET_SLACK_MS = 50.0
BACKOFF = 1.5  # integrations.openai.client.POLL_BACKOFF
DEFAULT_POLL_SLOTS = 50  # engine.scheduler.Scheduler(poll_concurrency=...)
POLL_ROUTE = "GET /v1/threads/{thread_id}/runs/{run_id}"
CREATE_ROUTE = "POST /v1/threads/{thread_id}/runs"


def make_job(
    job_id: str, integration_id: str, base_url: str, interval: float, max_interval: float
) -> Any:
    from engine import job
    from integrations.openai import OpenAI

    integration = OpenAI(
        id=integration_id,
        api_key=openai_common.API_KEY,
        base_url=base_url,
        poll_interval=interval,
        max_poll_interval=max_interval,
        poll_timeout=7200,
    )

    async def stamp(task: Any) -> float:
        return time.time()

    @job(job_id, integrations={"openai": integration})
    async def assistant_run(payload: Any, io: Any, ctx: Any) -> str:
        run = await io.openai.beta.threads.runs.create_and_wait_for_completion(
            "run", payload["thread_id"], assistant_id=payload["assistant_id"]
        )
        await io.run_task("continued", stamp)
        return str(run.status)

    return assistant_run


def make_jobs(spec: dict[str, Any]) -> dict[str, Any]:
    """{"main": job, "hold": job}: the same job against the two fakes, with two integrations
    (ids "openai" and "hold": their pollers are distinct)."""
    return {
        name: make_job(
            spec["jobs"][name],
            name if name == "hold" else "openai",
            spec["urls"][name],
            spec["interval"],
            spec["max_interval"],
        )
        for name in ("main", "hold")
    }


# -- the worker subprocess -----------------------------------------------------------------------


async def child(raw: str) -> None:
    import engine.worker
    from engine import Worker

    spec = json.loads(raw)
    jobs = make_jobs(spec)
    if spec["poll_concurrency"] != DEFAULT_POLL_SLOTS:
        engine.worker.Scheduler = functools.partial(  # type: ignore[misc]
            engine.worker.Scheduler, poll_concurrency=spec["poll_concurrency"]
        )
    worker = Worker(list(jobs.values()), spec["url"], concurrency=spec["concurrency"])
    running = asyncio.create_task(worker.run())
    while worker._scheduler is None and not running.done():  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    samples: list[tuple[float, int]] = []
    sampler = asyncio.create_task(_sample_rss(samples))
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    running.add_done_callback(_exit_if_died)
    try:
        while not running.done():
            command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if command == "rss":
                rss, hwm = common.rss_kb()
                cpu = openai_common.cpu_seconds()
                print(json.dumps({"rss": rss, "hwm": hwm, "cpu": cpu, "at": time.time()}))
            elif command == "samples":
                print(json.dumps(samples))
                samples.clear()
            else:
                break
            sys.stdout.flush()
    finally:
        sampler.cancel()
        worker.stop()
        await running


def _exit_if_died(task: asyncio.Task[None]) -> None:
    """The worker returned or raised without being told to stop: say so and end the process,
    so that the parent does not wait for runs that nobody executes."""
    if task.cancelled() or task.exception() is not None:
        error = "cancelled" if task.cancelled() else repr(task.exception())
        print(f"the worker died: {error}", file=sys.stderr, flush=True)
        os._exit(3)


async def _sample_rss(samples: list[tuple[float, int]]) -> None:
    while True:
        samples.append((time.time(), _vmrss_kb()))
        await asyncio.sleep(0.25)


def _vmrss_kb() -> int:
    """VmRSS now, without a collection first (a /proc read: no disk, does not block)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# -- the parent ----------------------------------------------------------------------------------


async def make_threads(base_url: str, n: int) -> tuple[str, list[str]]:
    """One assistant and `n` threads, created with the bare client (32 requests at a time)."""
    import warnings

    import openai

    client = openai.AsyncOpenAI(api_key=openai_common.API_KEY, base_url=base_url, max_retries=2)
    gate = asyncio.Semaphore(32)

    async def one(i: int) -> str:
        async with gate:
            thread = await client.beta.threads.create(
                messages=[{"role": "user", "content": f"question {i}"}]
            )
            return str(thread.id)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the Assistants API's
            assistant = await client.beta.assistants.create(model="gpt-4o", name="bench")
            threads = await asyncio.gather(*(one(i) for i in range(n)))
    finally:
        await client.close()
    return assistant.id, list(threads)


def _payloads(assistant_id: str, threads: list[str], first: int = 0) -> list[dict[str, Any]]:
    return [
        {"i": first + i, "thread_id": t, "assistant_id": assistant_id}
        for i, t in enumerate(threads)
    ]


async def _wait_counts(
    worker: common.Worker,
    done: Any,
    timeout: float,
    proc: asyncio.subprocess.Process | None = None,
    every: float = 0.1,
) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"the worker subprocess exited with {proc.returncode}")
        counts = await worker.count_status()
        if done(counts):
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"runs did not reach the expected state in {timeout} s: {counts}")
        await asyncio.sleep(every)


async def _cancel(store: Any, run_ids: list[str]) -> None:
    """Cancels the runs in one transaction (the engine's own cancel statements)."""
    from engine import clock

    now = clock.now()
    async with store.begin() as conn:
        canceled = [{"id": i, "now": now, "error": None} for i in run_ids]
        await conn.execute(store._sql.cancel_run, canceled)
        await conn.execute(
            store._sql.cancel_open_tasks, [{"run_id": i, "now": now} for i in run_ids]
        )


async def bench(
    db: common.BenchDB, servers: dict[str, openai_common.FakeServer], args: Any
) -> dict[str, Any]:
    n = args.runs
    threads: dict[str, tuple[str, list[str]]] = {}
    for name, server in servers.items():
        await server.reset()
        threads[name] = await make_threads(server.base_url, n + (name == "main"))
    spec = {
        "url": db.url,
        "jobs": {name: common.unique_job_id(f"openai-{name}") for name in servers},
        "urls": {name: server.base_url for name, server in servers.items()},
        "interval": args.poll_interval,
        "max_interval": args.max_poll_interval,
        "concurrency": args.concurrency,
        "poll_concurrency": args.poll_concurrency,
    }
    jobs = make_jobs(spec)
    parent = common.Worker(db.url)
    await parent.prepare(*jobs.values())
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--child",
        json.dumps(spec),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    worker = common.Child(proc)
    r: dict[str, Any] = {}
    try:
        if await worker.line() != "ready":
            raise RuntimeError("the worker subprocess did not start")
        await asyncio.sleep(0.5)  # let the scheduler settle into its idle sleep
        r["cold"] = await worker.ask("rss")

        # Warm-up: one run through create, polls, completion and resume.
        assistant, main_threads = threads["main"]
        await common.create_runs(
            parent.store, jobs["main"], _payloads(assistant, main_threads[-1:], -1)
        )
        await _wait_counts(
            parent, lambda c: c.get("COMPLETED", 0) >= 1, args.run_seconds + 30, proc
        )
        await asyncio.sleep(0.5)
        r["warm"] = await worker.ask("rss")
        await worker.ask("samples")

        # Phase 1: every run suspended on its poll.
        assistant, hold_threads = threads["hold"]
        r["hold_t0"] = time.time()
        hold_ids = await common.create_runs(
            parent.store, jobs["hold"], _payloads(assistant, hold_threads)
        )
        await _wait_counts(
            parent,
            lambda c: c.get("QUEUED", 0) + c.get("RUNNING", 0) == 0,
            args.timeout,
            proc,
        )
        r["hold_t1"] = time.time()
        await asyncio.sleep(0.5)
        r["suspended"] = await worker.ask("rss")
        r["steady_t0"] = time.time()
        await asyncio.sleep(args.steady_seconds)
        r["steady_t1"] = time.time()
        r["steady"] = await worker.ask("rss")
        r["hold_samples"] = await worker.ask("samples")
        await _cancel(parent.store, hold_ids)
        r["hold_requests"] = await servers["hold"].requests()
        r["hold_tasks"] = await _tasks(parent.store, hold_ids)
        await asyncio.sleep(0.5)

        # Phase 2: runs that complete after --run-seconds.
        assistant, main_threads = threads["main"]
        before = await worker.ask("rss")
        fake_cpu0 = servers["main"].pid_cpu_seconds()
        r["t0"] = time.time()
        ids = await common.create_runs(
            parent.store, jobs["main"], _payloads(assistant, main_threads[:-1])
        )
        counts = await _wait_counts(
            parent,
            lambda c: c.get("COMPLETED", 0) + c.get("FAILED", 0) >= n + 1,
            args.timeout,
            proc,
        )
        r["t1"] = time.time()
        r["after"] = await worker.ask("rss")
        r["samples"] = await worker.ask("samples")
        r["cpu"] = r["after"]["cpu"] - before["cpu"]
        r["fake_cpu"] = servers["main"].pid_cpu_seconds() - fake_cpu0
        r["counts"] = counts
        await worker.stop()
        r["requests"] = await servers["main"].requests()
        r["tasks"] = await _tasks(parent.store, ids)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await parent.close()
    return r


async def _tasks(store: Any, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per run: its payload, status, and the 'run' (poll) and 'continued' tasks."""
    from sqlalchemy import select

    from engine.schema import runs, tasks

    wanted = set(run_ids)
    async with store.begin() as conn:
        run_rows = (await conn.execute(select(runs.c.id, runs.c.payload, runs.c.status))).all()
        task_rows = (
            await conn.execute(
                select(
                    tasks.c.run_id,
                    tasks.c.key,
                    tasks.c.started_at,
                    tasks.c.completed_at,
                    tasks.c.output,
                    tasks.c.poll_state,
                ).where(tasks.c.key.in_(("run", "continued")))
            )
        ).all()
    out = {r.id: {"payload": r.payload, "status": r.status} for r in run_rows if r.id in wanted}
    for t in task_rows:
        if t.run_id in out:
            out[t.run_id][t.key] = t
    return out


# -- analysis ------------------------------------------------------------------------------------


def ideal_polls(start: float, until: float, interval: float, cap: float) -> list[float]:
    """The schedule's poll times (no lag) for a wait started at `start`, up to the first poll
    at or after `until` (for a run completed at `until`: the poll that sees it)."""
    times = []
    t = start + interval
    polls = 0
    while True:
        times.append(t)
        polls += 1
        if t >= until:
            return times
        t += min(interval * BACKOFF**polls, cap)


def _thread_of(path: str) -> str:
    return path.split("/")[3] if path.startswith("/v1/threads/") else ""


def analyse_steady(r: dict[str, Any], args: Any) -> dict[str, Any]:
    """Phase 1: polls sent vs asked over the steady window, all runs suspended."""
    t0, t1 = r["steady_t0"], r["steady_t1"]
    sent = sum(1 for q in r["hold_requests"] if q["route"] == POLL_ROUTE and t0 <= q["at"] < t1)
    asked = 0
    for run in r["hold_tasks"].values():
        wait = run.get("run")
        if wait is None or wait.started_at is None:
            continue
        times = ideal_polls(
            wait.started_at.timestamp(), t1, args.poll_interval, args.max_poll_interval
        )
        asked += sum(1 for t in times if t0 <= t < t1)
    states = [run["run"].poll_state or {} for run in r["hold_tasks"].values() if "run" in run]
    return {
        "seconds": t1 - t0,
        "sent": sent,
        "asked": asked,
        "polls_per_run": statistics.fmean(int(s.get("polls", 0)) for s in states)
        if states
        else 0.0,
    }


def analyse(r: dict[str, Any], args: Any) -> dict[str, Any]:
    """Phase 2: polls per second and the completed -> continued delays."""
    t0 = r["t0"]
    created: dict[str, float] = {}
    polls: dict[str, list[float]] = {}
    for req in r["requests"]:
        if req["at"] < t0:
            continue
        if req["route"] == CREATE_ROUTE:
            created[_thread_of(req["path"])] = req["at"]
        elif req["route"] == POLL_ROUTE:
            polls.setdefault(_thread_of(req["path"]), []).append(req["at"])
    delays, detect, resume, ideal_detect, targets = [], [], [], [], []
    asked: Counter[int] = Counter()
    per_run_polls, per_run_ideal = [], []
    missing = 0
    for run in r["tasks"].values():
        tid = run["payload"]["thread_id"]
        wait, cont = run.get("run"), run.get("continued")
        if tid not in created or wait is None or cont is None or wait.started_at is None:
            missing += 1
            continue
        done_at = created[tid] + args.run_seconds
        ideal = ideal_polls(
            wait.started_at.timestamp(), done_at, args.poll_interval, args.max_poll_interval
        )
        for t in ideal:
            asked[int(t - t0)] += 1
        seen = [t for t in polls.get(tid, []) if t >= done_at]
        continued = float(cont.output)
        delays.append(continued - done_at)
        if seen:
            detect.append(seen[0] - done_at)
            resume.append(continued - seen[0])
        ideal_detect.append(ideal[-1] - done_at)
        gap = ideal[-1] - ideal[-2] if len(ideal) > 1 else args.poll_interval
        targets.append(gap + TARGET_SLACK_MS / 1000)
        per_run_polls.append(len(polls.get(tid, [])))
        per_run_ideal.append(len(ideal))
    sent: Counter[int] = Counter()
    for times in polls.values():
        for t in times:
            sent[int(t - t0)] += 1
    return {
        "delays": delays,
        "detect": detect,
        "resume": resume,
        "ideal_detect": ideal_detect,
        "targets": targets,
        "asked": asked,
        "sent": sent,
        "per_run_polls": per_run_polls,
        "per_run_ideal": per_run_ideal,
        "missing": missing,
        "created": sorted(created.values()),
    }


# -- printing ------------------------------------------------------------------------------------


def report_memory(r: dict[str, Any], steady: dict[str, Any], args: Any) -> None:
    mb = 1024.0
    warm = r["warm"]["rss"] / mb
    growth = r["suspended"]["rss"] / mb - warm
    steady_growth = r["steady"]["rss"] / mb - warm
    peak = max((kb for _, kb in r["hold_samples"]), default=0) / mb
    verdict = "ok" if growth <= TARGET_MB else "MISS"
    rows = [
        ("idle, jobs loaded (cold)", r["cold"]["rss"] / mb, r["cold"]["hwm"] / mb, ""),
        ("after 1 warm-up run (warm)", warm, r["warm"]["hwm"] / mb, ""),
        (
            f"all {args.runs} runs suspended",
            r["suspended"]["rss"] / mb,
            r["suspended"]["hwm"] / mb,
            "",
        ),
        (
            f"  + {args.steady_seconds:.0f} s of polling them",
            r["steady"]["rss"] / mb,
            r["steady"]["hwm"] / mb,
            "",
        ),
        ("peak sampled (phase 1, no gc)", peak, "", ""),
        ("growth (suspended - warm)", growth, "", verdict),
        (
            "growth (+ polling - warm)",
            steady_growth,
            "",
            "ok" if steady_growth <= TARGET_MB else "MISS",
        ),
        ("growth (suspended - cold)", r["suspended"]["rss"] / mb - r["cold"]["rss"] / mb, "", ""),
    ]
    common.table(("worker RSS", "VmRSS MB", "VmHWM MB", f"target <= {TARGET_MB:.0f} MB"), rows)
    seconds = steady["seconds"]
    cpu = r["steady"]["cpu"] - r["suspended"]["cpu"]
    common.table(
        ("steady polling, all suspended", "polls/s", "per run/s"),
        [
            (
                "asked by the schedule",
                steady["asked"] / seconds,
                steady["asked"] / seconds / args.runs,
            ),
            (
                f"  ({args.runs} runs / max interval {args.max_poll_interval} s)",
                args.runs / args.max_poll_interval,
                1 / args.max_poll_interval,
            ),
            (
                "sent (received by the fake)",
                steady["sent"] / seconds,
                steady["sent"] / seconds / args.runs,
            ),
        ],
        title=(
            f"phase 1: {args.runs} runs queued -> all suspended in "
            f"{r['hold_t1'] - r['hold_t0']:.1f} s; then {seconds:.1f} s of polling: worker CPU "
            f"{cpu:.1f} s ({cpu / seconds:.0%} of a core), {steady['polls_per_run']:.1f} polls "
            "per run so far"
        ),
    )


def report_delay(db: common.BenchDB, r: dict[str, Any], a: dict[str, Any], args: Any) -> None:
    created = a["created"]
    t0 = r["t0"]
    last = max([*a["sent"], *a["asked"]], default=0)
    rows = []
    for second in range(last + 1):
        lo, hi = t0 + second, t0 + second + 1
        in_progress = sum(1 for c in created if c < hi and c + args.run_seconds > lo)
        rows.append(
            (
                f"{second:>3}-{second + 1:<3}",
                a["asked"].get(second, 0),
                a["sent"].get(second, 0),
                in_progress,
            )
        )
    common.table(
        ("t since queued (s)", "asked polls", "sent polls", "fake runs in progress"),
        rows,
        title=(
            f"phase 2: {args.runs} runs of {args.run_seconds} s queued at once; polls per "
            f"second (schedule {args.poll_interval} s x{BACKOFF} up to "
            f"{args.max_poll_interval} s)"
        ),
    )
    window = r["t1"] - t0
    sent_total, asked_total = sum(a["per_run_polls"]), sum(a["per_run_ideal"])
    runs = max(len(a["per_run_polls"]), 1)
    spread = created[-1] - created[0] if created else float("nan")
    print(
        f"polls sent {sent_total} vs asked {asked_total} ({sent_total / runs:.2f} vs "
        f"{asked_total / runs:.2f} per run); peak sent {max(a['sent'].values(), default=0)}/s "
        f"vs asked {max(a['asked'].values(), default=0)}/s; the {args.runs} creates spread "
        f"over {spread:.1f} s",
        flush=True,
    )
    print(
        f"CPU in phase 2 ({window:.1f} s): worker {r['cpu']:.1f} s "
        f"({r['cpu'] / window:.0%} of a core), fake server {r['fake_cpu']:.1f} s "
        f"({r['fake_cpu'] / window:.0%})\n",
        flush=True,
    )

    def row(name: str, samples: list[float], target: Any = "", verdict: str = "") -> Any:
        if not samples:
            return (name, 0, "-", "-", "-", target, verdict)
        med, _mean, p95 = common.summary_ms(samples)
        return (name, len(samples), med, p95, common.ms(max(samples)), target, verdict)

    target_ms = common.ms(statistics.median(a["targets"])) if a["targets"] else float("nan")
    med = common.ms(statistics.median(a["delays"])) if a["delays"] else float("nan")
    rows = [
        row(
            "fake run completed -> job continues",
            a["delays"],
            target_ms,
            "ok" if med <= target_ms else "MISS",
        ),
        row("  completed -> the poll that saw it", a["detect"]),
        row("  that poll -> job continues", a["resume"]),
        row("ideal schedule: completed -> poll", a["ideal_detect"]),
    ]
    common.table(("delay", "n", "median ms", "p95 ms", "max ms", "target ms", ""), rows)
    statuses = Counter(run["status"] for run in r["tasks"].values())
    print(
        f"runs: {dict(statuses)}; {a['missing']} without a recorded create/continue; all done "
        f"{window:.1f} s after queueing; driver floor {db.driver_floor_ms():.3f} ms\n",
        flush=True,
    )


async def main(args: Any) -> None:
    servers: dict[str, openai_common.FakeServer] = {}
    try:
        servers["main"] = await openai_common.FakeServer.start(run_seconds=args.run_seconds)
        servers["hold"] = await openai_common.FakeServer.start(run_seconds=args.hold_seconds)
        for kind in common.databases(args.db):
            common.header(
                f"bench_openai_waits ({args.runs} runs x create_and_wait_for_completion)", kind
            )
            async with common.bench_db(kind) as db:
                r = await db.between_floors(args.floor_ops, bench(db, servers, args))
                report_memory(r, analyse_steady(r, args), args)
                report_delay(db, r, analyse(r, args), args)
    finally:
        for server in servers.values():
            with contextlib.suppress(Exception):
                await server.stop()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        asyncio.run(child(sys.argv[2]))
        sys.exit(0)
    p = common.parser(__doc__.splitlines()[0])
    p.set_defaults(db="sqlite")
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--run-seconds", type=float, default=5.0)
    p.add_argument("--hold-seconds", type=float, default=3600.0)
    p.add_argument("--steady-seconds", type=float, default=5.0)
    p.add_argument("--poll-interval", type=float, default=0.5)
    p.add_argument("--max-poll-interval", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--poll-concurrency", type=int, default=DEFAULT_POLL_SLOTS)
    p.add_argument("--timeout", type=float, default=100.0)
    asyncio.run(main(p.parse_args()))
