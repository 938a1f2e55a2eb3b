"""Several `engine run` processes on one PostgreSQL database: every run completes, no task runs
twice, the work is shared, and a worker killed with -9 has its runs finished by the others."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine import Engine

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TASKS = 5
KEYS = [f"k{i}" for i in range(TASKS)]


class ExecutedTwice(AssertionError):
    """A task's side effect happened twice although no worker crashed."""


def trigger_many(url: str, count: int, payload: dict[str, Any]) -> list[str]:
    async def go() -> list[str]:
        async with Engine(url) as engine:
            return [await engine.trigger("five", payload) for _ in range(count)]

    return asyncio.run(go())


def statuses(url: str) -> Counter[str]:
    async def go() -> Counter[str]:
        async with Engine(url) as engine:
            return Counter(r["status"] for r in await engine.list_runs("five", None, 10_000))

    return asyncio.run(go())


def completed_pairs(url: str, run_ids: list[str]) -> set[tuple[str, str]]:
    """(run id, task key) of every COMPLETED task, read in one go."""

    async def go() -> set[tuple[str, str]]:
        async with Engine(url) as engine:
            views = await asyncio.gather(*(engine.show_run(r) for r in run_ids))
        return {
            (view["id"], task["key"])
            for view in views
            for task in view["tasks"]
            if task["status"] == "COMPLETED"
        }

    return asyncio.run(go())


def executions(log: Path) -> list[tuple[str, str, int]]:
    rows = []
    for line in log.read_text().splitlines():
        run_id, key, pid = line.split()[:3]
        rows.append((run_id, key, int(pid)))
    return rows


def wait_all_completed(procs: Any, url: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    seen: Counter[str] = Counter()
    while time.monotonic() < deadline:
        seen = statuses(url)
        assert not seen["FAILED"] and not seen["CANCELED"], seen
        if seen["COMPLETED"] == count:
            return
        time.sleep(0.3)
    logs = "\n".join(f"--- worker {w.pid}:\n{w.output}" for w in procs.workers)
    raise AssertionError(f"not all {count} runs completed in {timeout}s: {dict(seen)}\n{logs}")


def start_three_workers(procs: Any, url: str) -> list[Any]:
    """Three `engine run` processes on one database, started together, all ready."""
    workers = [procs.worker("many.py", url, concurrency=10, ready=False) for _ in range(3)]
    for worker in workers:
        worker.wait_ready()
    return workers


def test_three_workers_share_200_runs_and_run_each_task_once(
    procs: Any, pg_head_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    workers = start_three_workers(procs, pg_head_url)
    run_ids = trigger_many(pg_head_url, 200, {"log": str(log), "sleep": 0.02})
    assert len(set(run_ids)) == 200
    wait_all_completed(procs, pg_head_url, 200, timeout=45)

    done = procs.runs(pg_head_url, "five", "COMPLETED", limit=500)
    assert sorted(r["id"] for r in done) == sorted(run_ids)
    rows = executions(log)
    per_task = Counter((run_id, key) for run_id, key, _ in rows)
    assert set(per_task) == {(r, k) for r in run_ids for k in KEYS}
    # The work was shared, and each run's output names the workers whose step was recorded.
    pids = Counter(pid for _, _, pid in rows)
    assert set(pids) <= {w.pid for w in workers}
    assert len(pids) > 1, f"one worker did everything: {pids}"
    for run in done:
        assert len(run["output"]) == TASKS and set(run["output"]) <= set(pids), run
    for worker in workers:
        worker.signal(signal.SIGTERM)
    for worker in workers:
        assert worker.wait(20) == 0, worker.output
    twice = {pair: n for pair, n in per_task.items() if n > 1}
    if twice:
        raise ExecutedTwice(f"tasks executed more than once without a crash: {twice}")


def test_kill9_one_of_three_workers_the_others_finish_its_runs(
    procs: Any, pg_head_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "effects.log"
    workers = start_three_workers(procs, pg_head_url)
    run_ids = trigger_many(pg_head_url, 100, {"log": str(log), "sleep": 0.03})
    victim, others = workers[0], workers[1:]

    def victim_is_busy() -> bool:
        rows = executions(log) if log.exists() else []
        return len(rows) >= 150 and sum(pid == victim.pid for _, _, pid in rows) >= 10

    procs.wait_until(victim_is_busy, 30, "the victim worker to have done some tasks")
    # Freeze the survivors so the database is read exactly as the kill left it.
    frozen_at = time.monotonic()
    for worker in others:
        os.kill(worker.pid, signal.SIGSTOP)
    try:
        victim.kill9()
        before_kill = completed_pairs(pg_head_url, run_ids)
        executed_at_kill = Counter((r, k) for r, k, _ in executions(log))
    finally:
        for worker in others:
            os.kill(worker.pid, signal.SIGCONT)
    frozen = time.monotonic() - frozen_at
    assert 0 < len(before_kill) < 100 * TASKS
    assert before_kill <= set(executed_at_kill)

    wait_all_completed(procs, pg_head_url, 100, timeout=45)
    rows = executions(log)
    per_task = Counter((run_id, key) for run_id, key, _ in rows)
    assert set(per_task) == {(r, k) for r in run_ids for k in KEYS}
    for pair in before_kill:
        assert per_task[pair] == 1, (
            f"{pair} was committed before the kill and ran {per_task[pair]}x"
        )
    # Whatever ran twice had not been committed at the kill. (Stricter, "its first execution
    # was the victim's", does not hold because of the heartbeat bug described above.)
    twice = [pair for pair, n in per_task.items() if n > 1]
    history = {pair: [pid for r, k, pid in rows if (r, k) == pair] for pair in twice}
    detail = f"victim {victim.pid}, survivors frozen {frozen:.2f}s, executions: {history}"
    assert not set(twice) & before_kill, detail
    # The victim's unfinished runs were finished by the survivors.
    victim_runs = {r for r, _, pid in rows if pid == victim.pid}
    unfinished = {r for r in victim_runs if any((r, k) not in before_kill for k in KEYS)}
    survivors = {w.pid for w in others}
    for run_id in unfinished:
        assert any(r == run_id and pid in survivors for r, _, pid in rows), run_id
    for worker in others:
        worker.signal(signal.SIGTERM)
    for worker in others:
        assert worker.wait(20) == 0, worker.output
