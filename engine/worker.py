"""The `engine run` process: load the app, bring the schema to head, schedule until a signal."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from . import migrate
from .app import load_app
from .client import database_url
from .jobs import Job
from .scheduler import Scheduler
from .store import Store

log = logging.getLogger("engine.worker")


async def register(store: Store, jobs: Sequence[Job]) -> None:
    """Records the jobs (id, version, payload schema) and registers their integrations' pollers."""
    await store.register_jobs([(j.id, j.version, j.payload_schema()) for j in jobs])
    for job in jobs:
        for integration in job.integrations.values():
            integration.register_pollers()


async def run_worker(
    app: str | Sequence[Job],
    database_url_: str | None = None,
    *,
    concurrency: int = 20,
    lease_seconds: float = 30.0,
    handle_signals: bool = True,
) -> None:
    jobs = load_app(app) if isinstance(app, str) else list(app)
    store = Store(database_url(database_url_), pool_size=min(concurrency + 5, 50))
    try:
        await migrate.upgrade(store)
        await register(store, jobs)
        scheduler = Scheduler(store, jobs, concurrency=concurrency, lease_seconds=lease_seconds)
        if handle_signals:
            _install_signals(scheduler)
        safe = store.parsed_url.render_as_string(hide_password=True)
        names = ", ".join(j.key for j in jobs)
        print(
            f"engine worker {scheduler.worker_id} on {safe}: {names}", file=sys.stderr, flush=True
        )
        await scheduler.run()
        print("engine worker stopped", file=sys.stderr, flush=True)
    finally:
        await store.close()


def _install_signals(scheduler: Scheduler) -> None:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def first(sig: signal.Signals) -> None:
        print(
            f"engine worker: {sig.name}, finishing in-flight steps (again to force)",
            file=sys.stderr,
            flush=True,
        )
        scheduler.stop()
        for s in signals:
            loop.add_signal_handler(s, forced, s)

    def forced(sig: signal.Signals) -> None:
        # In-flight runs keep their lease until it expires; nothing recorded is lost.
        print("engine worker: forced stop", file=sys.stderr, flush=True)
        raise SystemExit(1)

    for s in signals:
        loop.add_signal_handler(s, first, s)
