"""Helpers for tests: an in-process worker harness and unique job ids."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from engine import Engine, Job
from engine.scheduler import Scheduler
from engine.worker import register


def unique_id(prefix: str) -> str:
    """Job ids are global to the process: each test's job gets its own."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


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
