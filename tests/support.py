"""Helpers for tests: an in-process worker harness, unique job ids and waiting for a condition."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from engine import Engine, Job, clock
from engine.scheduler import Scheduler
from engine.worker import register

# The API key tests give the openai client; they check it never shows in what the engine records.
FAKE_OPENAI_KEY = "sk-acceptance-secret-key"


def use_fake_openai(monkeypatch: pytest.MonkeyPatch, base_url: str) -> None:
    """Points the openai client at a fake server, here and in the worker processes started next."""
    monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)


def unique_id(prefix: str) -> str:
    """Job ids are global to the process: each test's job gets its own."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Polls `check` until it is true; fails naming `what` after `timeout` seconds (the machine
    running the tests may be slow and busy: pass a generous timeout, never a tight one)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


async def lose_executions(
    scheduler: Scheduler, run_id: str, started: list[Any], times: int
) -> None:
    """`times` times: once the run's next execution has started (its step appended to
    `started`), that execution stops without concluding, as if its worker died, and the test
    clock moves past its lease, so the scheduler may claim the run again."""
    for n in range(1, times + 1):

        def running(n: int = n) -> bool:
            return len(started) == n and run_id in scheduler.active

        await until(running, f"execution {n} to start")
        scheduler.active[run_id].cancel()
        await until(lambda: run_id not in scheduler.active, f"execution {n} to stop")
        clock.advance(scheduler.lease_seconds + 1)
        scheduler.wake.set()


class Harness:
    """An engine and an in-process scheduler on one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = Engine(url)
        self.schedulers: list[tuple[Scheduler, asyncio.Task[None]]] = []

    @property
    def store(self) -> Any:
        return self.engine.store

    async def start(self, *jobs: Job, **options: Any) -> Scheduler:
        await self.engine.upgrade()
        await register(self.store, jobs)
        options.setdefault("lease_seconds", 5)
        scheduler = Scheduler(self.store, jobs, **options)
        self.schedulers.append((scheduler, asyncio.create_task(scheduler.run())))
        return scheduler

    async def run(self, job: Job, payload: Any = None, timeout: float = 20.0) -> dict[str, Any]:
        """Triggers `job` and waits until the run is final; returns the run's show view."""
        run_id = await self.engine.trigger(job.id, payload)
        await self.engine.wait_for(run_id, timeout)
        return await self.engine.show_run(run_id)

    async def stop(self) -> None:
        for scheduler, _ in self.schedulers:
            scheduler.stop()
        for _, task in self.schedulers:
            await asyncio.wait_for(task, 20)
        self.schedulers.clear()

    async def close(self) -> None:
        await self.stop()
        await self.engine.close()
