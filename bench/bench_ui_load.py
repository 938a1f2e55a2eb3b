"""What an open dashboard costs a worker at full throughput.

One in-process worker (as bench_throughput: `--runs` runs of `--tasks` trivial tasks, queued up
front, concurrency 50) is timed alternately without and with a dashboard open beside it: a real
`engine ui` process with `--viewers` live runs lists open (server-sent event streams), each
polling the database once a second. Rounds alternate (without, with, without,
with...) so the machine's drift hits both sides alike; the median of each side is compared.

    python bench/bench_ui_load.py [--db sqlite|postgres|both] [--runs 500] [--rounds 3]
                                  [--viewers 3]

Target: the dashboard costs the worker at most 5% of its throughput (issue 9).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common

sys.path.insert(0, str(common.ROOT / "tests"))
from dashboard import Dashboard  # the tests' helper: a free port, its group killed on close

TARGET_PCT = 5.0


async def _noop(task: Any) -> int:
    return 1


def make_job(n: int) -> Any:
    from engine import job

    @job(common.unique_job_id("ui-load"))
    async def tasks(payload: Any, io: Any, ctx: Any) -> int:
        for i in range(n):
            await io.run_task(f"t{i}", _noop)
        return n

    return tasks


class Viewers:
    """Threads holding the dashboard's live streams open, reading every event."""

    def __init__(self, base: str, paths: list[str]) -> None:
        self.stop = threading.Event()
        self.events = 0
        self.threads = [threading.Thread(target=self._read, args=(base + p,)) for p in paths]

    def _read(self, url: str) -> None:
        import httpx

        while not self.stop.is_set():
            try:
                with httpx.stream("GET", url, timeout=httpx.Timeout(5, read=5)) as stream:
                    for line in stream.iter_lines():
                        if line.startswith("event:"):
                            self.events += 1
                        if self.stop.is_set():
                            return
            except httpx.HTTPError:
                time.sleep(0.2)

    def __enter__(self) -> Viewers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


async def one_round(url: str, args: Any) -> float:
    """Runs/s of one worker through a fresh queue of `--runs` runs."""
    from sqlalchemy import text

    job = make_job(args.tasks)
    worker = common.Worker(url)
    await worker.prepare(job)
    ids = await common.create_runs(worker.store, job, [{"i": i} for i in range(args.runs)])
    await worker.start(job, concurrency=50)
    try:
        await worker.wait_until(
            lambda c: c.get("COMPLETED", 0) >= args.done_before + args.runs, timeout=300, every=0.1
        )
    finally:
        await worker.stop()
    async with worker.store.begin() as conn:
        first, last = (
            await conn.execute(
                text(
                    "SELECT MIN(started_at), MAX(completed_at) FROM engine_runs "
                    f"WHERE job_id = '{job.id}'"
                )
            )
        ).first() or (None, None)
    await worker.close()
    args.done_before += len(ids)
    from datetime import UTC, datetime

    def ts(value: Any) -> float:
        value = datetime.fromisoformat(value) if isinstance(value, str) else value
        return float((value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp())

    return args.runs / (ts(last) - ts(first))


async def bench(url: str, args: Any) -> tuple[list[float], list[float], int]:
    args.done_before = 0
    await one_round(url, args)  # warm-up: the schema, the pool, the page cache
    workdir = Path(common.tempfile.mkdtemp(prefix="engine-bench-ui-load-"))
    ui = Dashboard(url, workdir)
    without: list[float] = []
    with_ui: list[float] = []
    events = 0
    try:
        ui.wait_ready()
        for _ in range(args.rounds):
            without.append(await one_round(url, args))
            viewers = Viewers(ui.base, ["/events/runs"] * args.viewers)
            with viewers:
                await asyncio.sleep(1.0)  # every stream connected and polling
                with_ui.append(await one_round(url, args))
            events += viewers.events
    finally:
        ui.close()
        common.shutil.rmtree(workdir, ignore_errors=True)
    return without, with_ui, events


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(
            f"bench_ui_load ({args.runs} runs x {args.tasks} tasks, {args.rounds} rounds, "
            f"{args.viewers} live runs lists open)",
            kind,
        )
        async with common.bench_db(kind) as db:
            without, with_ui, events = await bench(db.url, args)
        a, b = statistics.median(without), statistics.median(with_ui)
        cost = 100 * (a - b) / a
        common.table(
            ("one worker", "median runs/s", "rounds", "cost %", "target %", ""),
            [
                ("without a dashboard", a, "/".join(f"{x:.0f}" for x in without), "", "", ""),
                (
                    "with the dashboard open",
                    b,
                    "/".join(f"{x:.0f}" for x in with_ui),
                    cost,
                    TARGET_PCT,
                    "ok" if cost <= TARGET_PCT else "MISS",
                ),
            ],
        )
        print(f"the viewers received {events} events\n", flush=True)


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=500)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--viewers", type=int, default=3)
    asyncio.run(main(p.parse_args()))
