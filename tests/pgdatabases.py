"""Throwaway PostgreSQL databases for tests, cheap enough to make one per test.

Running the migrations and dropping a database cost more than copying one: a session runs the
migrations once, into a template database, and each test gets `CREATE DATABASE ... TEMPLATE`
(tens of milliseconds). Dropping is left to a background thread that drops several databases
at once (each DROP waits for a checkpoint; concurrent ones share it), so a test does not wait
for the database of the one before it.

Several pytest sessions share the server (other branches' suites run at the same time): every
name starts with a prefix unique to this session, and the session drops what it made.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import threading
import uuid

import asyncpg

from engine import Engine


async def _execute(dsn: str, statement: str) -> None:
    for attempt in range(1, 11):
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            break
        except asyncpg.TooManyConnectionsError:
            # Every session on this server shares max_connections: wait for a free slot.
            if attempt == 10:
                raise
            await asyncio.sleep(attempt * 0.5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def _run(dsn: str, statement: str) -> None:
    asyncio.run(_execute(dsn, statement))


class _Dropper:
    """Drops databases in a thread of its own, several at once; `join()` waits for them all.

    On PostgreSQL 15 every DROP DATABASE waits for a checkpoint of the whole cluster (seconds
    on a busy machine), but concurrent drops share one: 16 drops one by one took 29 s here,
    together 0.8 s. So the thread drops whatever has queued up since its last batch, at once.
    """

    # Connections are shared with every other session on the server (max_connections).
    BATCH = 8
    ATTEMPTS = 5

    def __init__(self, admin_dsn: str) -> None:
        self._admin_dsn = admin_dsn
        self._names: queue.Queue[str | None] = queue.Queue()
        self._failures: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="pg-dropper", daemon=True)
        self._thread.start()

    def drop(self, name: str) -> None:
        self._names.put(name)

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            batch: list[str] = []
            first = self._names.get()
            while True:
                if first is None:
                    stopping = True
                else:
                    batch.append(first)
                if stopping or len(batch) >= self.BATCH:
                    break
                try:
                    first = self._names.get_nowait()
                except queue.Empty:
                    break
            if batch:
                asyncio.run(self._drop_all(batch))

    async def _drop_all(self, names: list[str]) -> None:
        async def drop(name: str) -> None:
            for attempt in range(1, self.ATTEMPTS + 1):
                try:
                    await _execute(
                        self._admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
                    )
                    return
                except Exception as exc:  # e.g. no free connection slot: try again
                    if attempt == self.ATTEMPTS:  # reported by join(): a leak must be noticed
                        self._failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    else:
                        await asyncio.sleep(attempt)

        await asyncio.gather(*(drop(name) for name in names))

    def join(self) -> list[str]:
        """Stops the thread after the queued drops; returns the drops that failed."""
        self._names.put(None)
        self._thread.join(120)
        return self._failures


class PgDatabases:
    """This session's databases on one server: a template at head and copies of it."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        # pid + random: unique among concurrent sessions, and traceable to a process if leaked.
        self.prefix = f"engine_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        self.template = f"{self.prefix}_tmpl"
        self._numbers = itertools.count(1)
        self._template_ready = False
        self._dropper = _Dropper(admin_dsn)

    def url(self, name: str) -> str:
        base = self.admin_dsn.rsplit("/", 1)[0]
        return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"

    def _new_name(self) -> str:
        return f"{self.prefix}_{next(self._numbers)}"

    def _build_template(self) -> None:
        _run(self.admin_dsn, f'CREATE DATABASE "{self.template}"')

        async def upgrade() -> None:
            async with Engine(self.url(self.template)) as engine:
                await engine.upgrade()

        asyncio.run(upgrade())
        # Nobody may connect to it any more: CREATE DATABASE ... TEMPLATE refuses a source
        # database with sessions on it.
        _run(self.admin_dsn, f'ALTER DATABASE "{self.template}" ALLOW_CONNECTIONS false')
        self._template_ready = True

    def at_head(self) -> str:
        """A new database with the engine's schema at head; returns its name."""
        if not self._template_ready:
            self._build_template()
        name = self._new_name()
        _run(self.admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def empty(self) -> str:
        """A new database without any table; returns its name."""
        name = self._new_name()
        _run(self.admin_dsn, f'CREATE DATABASE "{name}"')
        return name

    def drop(self, name: str) -> None:
        self._dropper.drop(name)

    def close(self) -> list[str]:
        """Drops the template after every copy; returns what could not be dropped."""
        if self._template_ready:
            self._dropper.drop(self.template)
        return self._dropper.join()
