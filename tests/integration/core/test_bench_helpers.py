"""bench/ against the current schema, on SQLite, at tiny sizes: a schema change that breaks the
benchmarks' shared helpers (bench/common.py: create_runs binds the run INSERT's parameters
itself) fails here instead of silently at the next benchmark run."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import IO, Context, job

pytestmark = pytest.mark.timeout(180)

BENCH = Path(__file__).resolve().parents[3] / "bench"


def _common() -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("common")


async def test_create_runs_queues_runs_a_worker_completes() -> None:
    common = _common()

    @job(common.unique_job_id("helpers"), concurrency=2)
    async def limited(payload: Any, io: IO, ctx: Context) -> Any:
        return payload["i"]

    async with common.bench_db("sqlite") as db:
        worker = common.Worker(db.url, pool_size=5)
        try:
            await worker.prepare(limited)
            ids = await common.create_runs(
                worker.store, limited, [{"i": i} for i in range(5)], ("", 2)
            )
            assert len(set(ids)) == 5
            assert await worker.count_status() == {"QUEUED": 5}
            with common.StatementCounter(worker.store) as counter:
                await worker.start(limited, concurrency=3)
                counts = await worker.wait_until(lambda c: c.get("COMPLETED") == 5, 60)
            assert counts == {"COMPLETED": 5} and counter.commits > 0
            outputs = [(await worker.engine.get_run(i))["output"] for i in ids]
            assert outputs == [0, 1, 2, 3, 4]
        finally:
            await worker.close()
    rss, hwm = common.rss_kb()
    assert 0 < rss <= hwm


@pytest.mark.parametrize(
    "script, sizes",
    [
        ("bench_task_write.py", ["--tasks", "5", "--repeat", "1"]),
        ("bench_replay.py", ["--tasks", "5", "--repeat", "1"]),
        ("bench_throughput.py", ["--runs", "5", "--tasks", "2", "--concurrency", "3"]),
    ],
)
def test_a_hot_path_benchmark_runs_at_tiny_sizes(script: str, sizes: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--db", "sqlite", "--floor-ops", "3", *sizes],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"== {script.removesuffix('.py')}" in done.stdout, done.stdout
