"""A worker: load the app, bring the schema to head, schedule until told to stop.

`engine run` is `Worker(app).run(handle_signals=True)`; tests, benchmarks and scripts embed a
`Worker` in their own event loop and call `stop()`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from . import clock, schedules
from .app import load_app
from .client import resolve_database_url
from .jobs import Job, registration
from .outage import retry_transient
from .recovery import DEFAULT_MAX_RECOVERIES, check_max_recoveries
from .scheduler import Scheduler
from .store import Store

log = logging.getLogger("engine.worker")


async def register(store: Store, jobs: Sequence[Job]) -> None:
    """Records the jobs (id, version, payload schema, ...) and their schedules, and registers
    their integrations' pollers."""
    await store.register_jobs([registration(j) for j in jobs])
    # Every job's schedules, none included: a schedule removed from the code stops firing.
    await store.register_schedules(
        sorted({j.id for j in jobs}), schedules.registrations(jobs, clock.now())
    )
    for job in jobs:
        for integration in job.integrations.values():
            integration.register_pollers()


class Worker:
    """Executes the runs of `app`'s jobs (a module path, a .py file, or a list of jobs)."""

    def __init__(
        self,
        app: str | Sequence[Job],
        database_url: str | None = None,
        *,
        concurrency: int = 20,
        lease_seconds: float = 30.0,
        max_recoveries: int = DEFAULT_MAX_RECOVERIES,
        tracer_provider: Any = None,
    ) -> None:
        self.max_recoveries = check_max_recoveries(max_recoveries)
        self.jobs = load_app(app) if isinstance(app, str) else list(app)
        self.url = resolve_database_url(database_url)
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        # OpenTelemetry spans go here, else to the global provider (engine.tracing).
        self.tracer_provider = tracer_provider
        self._scheduler: Scheduler | None = None
        self._stop_requested = False

    async def run(self, *, handle_signals: bool = False, announce: bool = False) -> None:
        """Works until `stop()` (or SIGINT/SIGTERM with `handle_signals`)."""
        store = Store(self.url, pool_size=min(self.concurrency + 5, 50))
        try:
            from . import migrate

            # A database that is restarting gets a minute to come back; a wrong URL, host or
            # password is reported at once.
            await retry_transient(lambda: migrate.upgrade(store), log)
            await retry_transient(lambda: register(store, self.jobs), log)
            scheduler = Scheduler(
                store,
                self.jobs,
                concurrency=self.concurrency,
                lease_seconds=self.lease_seconds,
                max_recoveries=self.max_recoveries,
                tracer_provider=self.tracer_provider,
            )
            self._scheduler = scheduler
            if self._stop_requested:
                scheduler.stop()
            if handle_signals:
                _install_signals(scheduler)
            if announce:
                safe = store.parsed_url.render_as_string(hide_password=True)
                names = ", ".join(j.key for j in self.jobs)
                _say(f"engine worker {scheduler.worker_id} on {safe}: {names}")
            await scheduler.run()
            if announce:
                _say("engine worker stopped")
        finally:
            await _close_integrations(self.jobs)
            await store.close()

    def stop(self) -> None:
        """Stop claiming; in-flight runs reach their next persisted point, then `run` returns."""
        self._stop_requested = True
        if self._scheduler is not None:
            self._scheduler.stop()


async def run_worker(
    app: str | Sequence[Job],
    database_url: str | None = None,
    *,
    concurrency: int = 20,
    lease_seconds: float = 30.0,
    max_recoveries: int = DEFAULT_MAX_RECOVERIES,
) -> None:
    """`engine run`: a worker that stops on SIGINT/SIGTERM."""
    worker = Worker(
        app,
        database_url,
        concurrency=concurrency,
        lease_seconds=lease_seconds,
        max_recoveries=max_recoveries,
    )
    await worker.run(handle_signals=True, announce=True)


async def _close_integrations(jobs: Sequence[Job]) -> None:
    """Integrations may hold network clients; those that can be closed are closed."""
    for integration in {id(i): i for job in jobs for i in job.integrations.values()}.values():
        close = getattr(integration, "aclose", None)
        if close is not None:
            try:
                await close()
            except Exception as exc:  # closing is best effort at shutdown
                log.warning("closing integration %s failed: %s", integration.id, exc)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _install_signals(scheduler: Scheduler) -> None:
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def first(sig: signal.Signals) -> None:
        _say(f"engine worker: {sig.name}, finishing in-flight steps (again to force)")
        scheduler.stop()
        for s in signals:
            loop.add_signal_handler(s, forced, s)

    def forced(sig: signal.Signals) -> None:
        # In-flight runs keep their lease until it expires; nothing recorded is lost.
        _say("engine worker: forced stop")
        raise SystemExit(1)

    for s in signals:
        loop.add_signal_handler(s, first, s)
