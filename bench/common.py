"""Shared helpers for the benchmarks: throwaway databases, the raw floor, tables, a worker.

Every benchmark measures the *raw floor* in the same run as its own figures (the machine is
shared and noisy, so absolute numbers drift between runs; ratios to the floor do much less):

- sqlite3:    one single-row INSERT + COMMIT through the bare `sqlite3` module, with the
              engine's pragmas (WAL, synchronous=NORMAL) and its `BEGIN IMMEDIATE`.
- aiosqlite:  the same through `aiosqlite` (the driver the engine uses): one thread hop per
              statement (BEGIN IMMEDIATE, INSERT, COMMIT).
- asyncpg tx: BEGIN; INSERT; COMMIT through a bare `asyncpg` connection (three round trips, as
              the engine's transactions are).
- asyncpg ac: one autocommit INSERT through `asyncpg` (one round trip: the absolute floor).

The "driver floor" used for ratios is aiosqlite on SQLite and asyncpg tx on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PG_ADMIN_DSN = os.environ.get("ENGINE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_CHOICES = ("sqlite", "postgres")


# -- arguments ---------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--floor-ops", type=int, default=300, help="INSERT+COMMITs per raw-floor measurement"
    )
    return p


def databases(choice: str) -> list[str]:
    return list(DB_CHOICES) if choice == "both" else [choice]


# -- statistics and printing -------------------------------------------------------------------


def ms(seconds: float) -> float:
    return seconds * 1000.0


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest-rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, mean, p95) of durations in seconds, as milliseconds."""
    return (
        ms(statistics.median(samples)),
        ms(statistics.fmean(samples)),
        ms(pct(samples, 95)),
    )


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> None:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    if title:
        print(title)
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for r in cells:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print(flush=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def header(name: str, kind: str) -> None:
    import sqlalchemy

    print(
        f"== {name} on {kind} | python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}, "
        f"sqlalchemy {sqlalchemy.__version__}, nproc {os.cpu_count()} ==",
        flush=True,
    )


# -- throwaway databases -----------------------------------------------------------------------


T = TypeVar("T")


@dataclass
class BenchDB:
    kind: str  # sqlite or postgres
    url: str  # the engine's URL (sqlite+aiosqlite:// or postgresql+asyncpg://)
    dsn: str = ""  # plain asyncpg DSN (postgres only)
    workdir: Path | None = None
    floors: list[FloorSet] = field(default_factory=list)

    async def measure_floor(self, ops: int) -> FloorSet:
        """Measures the raw floor now and keeps it (call before and after the benchmark)."""
        if self.kind == "sqlite":
            assert self.workdir is not None
            floor = await _sqlite_floor(self.workdir, ops)
        else:
            floor = await _pg_floor(self.dsn, ops)
        self.floors.append(floor)
        return floor

    def driver_floor_ms(self) -> float:
        """Median per-op ms of the driver floor over every measurement made in this run."""
        key = "aiosqlite" if self.kind == "sqlite" else "asyncpg tx"
        samples = [s for f in self.floors for s in f.samples[key]]
        return ms(statistics.median(samples))

    async def between_floors(self, ops: int, measurement: Awaitable[T]) -> T:
        """Measures the floor, then `measurement`, then the floor again, and prints the floor:
        every script's figures come with the floor of the same moment."""
        await self.measure_floor(ops)
        result = await measurement
        await self.measure_floor(ops)
        self.print_floor()
        return result

    def print_floor(self) -> None:
        rows = []
        for key in self.floors[0].samples:
            all_samples = [s for f in self.floors for s in f.samples[key]]
            med, mean, p95 = summary_ms(all_samples)
            per_set = "/".join(f"{ms(statistics.median(f.samples[key])):.3f}" for f in self.floors)
            rows.append((key, med, mean, p95, per_set))
        table(
            ("raw floor: 1-row INSERT+COMMIT", "median ms", "mean ms", "p95 ms", "median per set"),
            rows,
        )


@dataclass
class FloorSet:
    samples: dict[str, list[float]]


@contextlib.asynccontextmanager
async def bench_db(kind: str) -> AsyncIterator[BenchDB]:
    """A temporary SQLite file or a throwaway PostgreSQL database, removed afterwards."""
    if kind == "sqlite":
        workdir = Path(tempfile.mkdtemp(prefix="engine-bench-"))
        try:
            yield BenchDB(kind, f"sqlite+aiosqlite:///{workdir / 'engine.db'}", workdir=workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    import asyncpg

    name = f"engine_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = PG_ADMIN_DSN.rsplit("/", 1)[0]
    dsn = f"{base}/{name}"
    try:
        yield BenchDB(kind, dsn.replace("postgresql://", "postgresql+asyncpg://", 1), dsn=dsn)
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def pg_server_version() -> str:
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


# -- the raw floor -----------------------------------------------------------------------------

_FLOOR_TABLE = "CREATE TABLE IF NOT EXISTS bench_floor (id INTEGER PRIMARY KEY, v TEXT)"
_FLOOR_WARMUP = 20


def _sqlite_connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute(_FLOOR_TABLE)
    return conn


async def _sqlite_floor(workdir: Path, ops: int) -> FloorSet:
    import aiosqlite

    path = workdir / f"floor-{uuid.uuid4().hex[:6]}.db"
    bare: list[float] = []
    conn = _sqlite_connect(path)
    try:
        for i in range(ops + _FLOOR_WARMUP):
            t0 = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO bench_floor (v) VALUES (?)", (f"row-{i}",))
            conn.execute("COMMIT")
            if i >= _FLOOR_WARMUP:
                bare.append(time.perf_counter() - t0)
    finally:
        conn.close()
    hop: list[float] = []
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        for i in range(ops + _FLOOR_WARMUP):
            t0 = time.perf_counter()
            await db.execute("BEGIN IMMEDIATE")
            await db.execute("INSERT INTO bench_floor (v) VALUES (?)", (f"row-{i}",))
            await db.execute("COMMIT")
            if i >= _FLOOR_WARMUP:
                hop.append(time.perf_counter() - t0)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            os.unlink(f"{path}{suffix}")
    return FloorSet({"sqlite3": bare, "aiosqlite": hop})


async def _pg_floor(dsn: str, ops: int) -> FloorSet:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_FLOOR_TABLE.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY"))
        tx: list[float] = []
        auto: list[float] = []
        for i in range(ops + _FLOOR_WARMUP):
            t0 = time.perf_counter()
            async with conn.transaction():
                await conn.execute("INSERT INTO bench_floor (v) VALUES ($1)", f"row-{i}")
            if i >= _FLOOR_WARMUP:
                tx.append(time.perf_counter() - t0)
        for i in range(ops + _FLOOR_WARMUP):
            t0 = time.perf_counter()
            await conn.execute("INSERT INTO bench_floor (v) VALUES ($1)", f"row-{i}")
            if i >= _FLOOR_WARMUP:
                auto.append(time.perf_counter() - t0)
        await conn.execute("DROP TABLE bench_floor")
    finally:
        await conn.close()
    return FloorSet({"asyncpg tx": tx, "asyncpg ac": auto})


# -- an in-process worker ----------------------------------------------------------------------


class Worker:
    """An `Engine` plus an in-process `Scheduler` on one database (like tests/support.Harness)."""

    def __init__(self, url: str, pool_size: int = 55) -> None:
        from engine import Engine

        # Sized like `engine run` sizes its pool: concurrency + 5 (concurrency 50 here).
        self.engine = Engine(url, pool_size=pool_size)
        self.scheduler: Any = None
        self.task: asyncio.Task[None] | None = None

    @property
    def store(self) -> Any:
        return self.engine.store

    async def prepare(self, *jobs: Any) -> None:
        from engine.worker import register

        await self.engine.upgrade()
        await register(self.store, jobs)

    async def start(self, *jobs: Any, **options: Any) -> Any:
        from engine.scheduler import Scheduler

        await self.prepare(*jobs)
        options.setdefault("lease_seconds", 30)
        self.scheduler = Scheduler(self.store, jobs, **options)
        self.task = asyncio.create_task(self.scheduler.run())
        return self.scheduler

    async def stop(self) -> None:
        if self.scheduler is not None and self.task is not None:
            self.scheduler.stop()
            await asyncio.wait_for(self.task, 60)
        self.scheduler = self.task = None

    async def close(self) -> None:
        await self.stop()
        await self.engine.close()

    async def count_status(self) -> dict[str, int]:
        from sqlalchemy import text

        async with self.store.begin() as conn:
            rows = (
                await conn.execute(text("SELECT status, COUNT(*) FROM engine_runs GROUP BY status"))
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    async def wait_until(
        self, done: Callable[[dict[str, int]], bool], timeout: float, every: float = 0.2
    ) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            counts = await self.count_status()
            if done(counts):
                return counts
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs did not reach the expected state: {counts}")
            await asyncio.sleep(every)


async def create_runs(
    store: Any, job: Any, payloads: Sequence[Any], concurrency: tuple[str, int] | None = None
) -> list[str]:
    """Queues runs in one transaction with the engine's own INSERT (faster than 1 trigger each);
    `concurrency` is (key, limit) for a job with a concurrency limit."""
    from engine import clock

    ids = [uuid.uuid4().hex for _ in payloads]
    rows = [
        {
            "id": run_id,
            "job_id": job.id,
            "job_version": job.version,
            "payload": payload,
            "idempotency_key": None,
            "created_at": clock.now() + i * 1e-6,
            "priority": 0,
            "rank_at": clock.now() + i * 1e-6,
            "concurrency_key": concurrency[0] if concurrency else None,
            "concurrency_limit": concurrency[1] if concurrency else None,
            "wake_at": None,
            "deadline_at": None,
        }
        for i, (run_id, payload) in enumerate(zip(ids, payloads, strict=True))
    ]
    async with store.begin() as conn:
        await conn.execute(store._sql.create_run, rows)
        await store._notify(conn)
    store._wake_local()
    return ids


def unique_job_id(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


async def serve_rss(worker: Worker, extra: Callable[[], dict[str, Any]] | None = None) -> None:
    """The worker subprocess's side of `Child`: prints `ready`, then answers each `rss` line
    on stdin with one JSON line {"rss": VmRSS kB, "hwm": VmHWM kB, **extra()}, measured once
    the scheduler has settled into its idle sleep; any other line (or EOF) closes the worker."""
    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    try:
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "rss":
            await asyncio.sleep(0.5)  # let the scheduler settle into its idle sleep
            rss, hwm = rss_kb()
            print(json.dumps({"rss": rss, "hwm": hwm, **(extra() if extra else {})}), flush=True)
    finally:
        await worker.close()


def rss_kb() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in kB, after a full collection."""
    gc.collect()
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values["VmRSS"], values["VmHWM"]


class StatementCounter:
    """Counts SQL statements and commits on a store's engine while active."""

    def __init__(self, store: Any) -> None:
        self.sync_engine = store.engine.sync_engine
        self.statements = 0
        self.commits = 0

    def _on_execute(self, *_: Any) -> None:
        self.statements += 1

    def _on_commit(self, *_: Any) -> None:
        self.commits += 1

    def __enter__(self) -> StatementCounter:
        from sqlalchemy import event

        event.listen(self.sync_engine, "before_cursor_execute", self._on_execute)
        event.listen(self.sync_engine, "commit", self._on_commit)
        return self

    def __exit__(self, *_: Any) -> None:
        from sqlalchemy import event

        event.remove(self.sync_engine, "before_cursor_execute", self._on_execute)
        event.remove(self.sync_engine, "commit", self._on_commit)


def run_main(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    asyncio.run(main(args))


class Child:
    """A worker subprocess driven over stdin/stdout, one JSON line per command."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, script: str, spec: Any) -> Child:
        """Runs `script --child SPEC` (`spec` as JSON) and waits for its `ready` line: the
        worker side calls `serve_rss` (`kill()` it in a `finally`)."""
        import subprocess

        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            script,
            "--child",
            json.dumps(spec),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        child = cls(proc)
        try:
            if await child.line() != "ready":
                raise RuntimeError("the worker subprocess did not start")
        except BaseException:
            await child.kill()
            raise
        return child

    async def kill(self) -> None:
        """Kills the subprocess unless it has exited already."""
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not raw:
            raise RuntimeError("the worker subprocess exited")
        return raw.decode().strip()

    async def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{command}\n".encode())
        await self.proc.stdin.drain()
        return json.loads(await self.line())

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        await asyncio.wait_for(self.proc.wait(), 60)
