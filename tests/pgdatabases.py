"""Throwaway PostgreSQL databases for tests, cheap enough to make one per test.

Running the migrations and dropping a database cost more than copying one: a session runs the
migrations once, into a template database, and each test gets `CREATE DATABASE ... TEMPLATE`.
That copy still takes ~0.3 s (the server syncs every file it writes), so the next test's copy is
made in a background thread while this test runs, and is ready when it asks. Dropping is left
to a background thread that drops several databases at once (each DROP waits for a checkpoint;
concurrent ones share it), so a test does not wait for the database of the one before it.

Several pytest sessions share the server (other branches' suites run at the same time, and
each xdist worker is a session of its own): every name starts with a prefix unique to this
process, and the process drops what it made. A process killed before it could (a CI timeout, a
^C) leaves its databases behind; the prefix says which process made them (`_Owner`), so the
next session drops those whose process is dead, and only those.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import queue
import re
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from engine import Engine

# How long to wait for a free connection slot: every session on this server shares
# max_connections, and a benchmark of another branch can hold most of them for a minute.
SLOT_WAIT = 90.0


async def _execute(dsn: str, statement: str) -> None:
    deadline = time.monotonic() + SLOT_WAIT
    for attempt in itertools.count(1):
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            break
        except asyncpg.TooManyConnectionsError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(min(attempt * 0.5, 5.0))
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def run_statement(dsn: str, statement: str) -> None:
    """One statement on a connection of its own (waiting up to SLOT_WAIT for a free slot)."""
    asyncio.run(_execute(dsn, statement))


PREFIX = "engine_test_"


@dataclass(frozen=True)
class _Owner:
    """The process that made a database, as its name records it: the machine (a hash of the
    kernel's boot id and the pid namespace, where a pid means something), the pid, and when that
    pid started (so a pid reused by a later process is not mistaken for the owner)."""

    machine: str
    pid: int
    started: str

    NAME = re.compile(rf"^{PREFIX}([0-9a-f]{{8}})_([0-9]+)_([0-9]+)_[0-9a-f]{{4}}_")

    @staticmethod
    def this_machine() -> str | None:
        """None where /proc does not say (not Linux): no database is then ever called stale."""
        try:
            boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:
            return None
        return hashlib.sha256(f"{boot} {namespace}".encode()).hexdigest()[:8]

    @staticmethod
    def start_of(pid: int) -> str | None:
        """When `pid` started (clock ticks since boot), None if no such process."""
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        # Field 22; the command name (field 2, in parentheses) may itself contain spaces.
        return stat.rsplit(")", 1)[1].split()[19]

    @classmethod
    def me(cls) -> _Owner | None:
        machine, pid = cls.this_machine(), os.getpid()
        started = cls.start_of(pid)
        return cls(machine, pid, started) if machine and started else None

    @classmethod
    def of(cls, name: str) -> _Owner | None:
        """The owner a database name records; None for any other name (another scheme, another
        project): such a database is never touched."""
        match = cls.NAME.match(name)
        return cls(match[1], int(match[2]), match[3]) if match else None

    def is_dead(self) -> bool:
        """True only when sure: same machine and no live process with that pid and start."""
        return self.machine == self.this_machine() and self.start_of(self.pid) != self.started


async def _stale_databases(dsn: str) -> list[str]:
    """This machine's test databases whose creating process is dead."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", f"{PREFIX}%"
        )
    finally:
        await conn.close()
    names = [str(row["datname"]) for row in rows]
    return [name for name in names if (owner := _Owner.of(name)) and owner.is_dead()]


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
        self._best_effort: set[str] = set()
        self._thread = threading.Thread(target=self._loop, name="pg-dropper", daemon=True)
        self._thread.start()

    def drop(self, name: str, best_effort: bool = False) -> None:
        """Queues `name`; a best-effort drop that fails is no leak of this session's."""
        if best_effort:
            self._best_effort.add(name)
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
                    if name in self._best_effort:
                        return
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
        # Unique among concurrent sessions, and traceable to a process if leaked (`_Owner`).
        owner = _Owner.me()
        tag = f"{owner.machine}_{owner.pid}_{owner.started}" if owner else f"{os.getpid()}"
        self.prefix = f"{PREFIX}{tag}_{uuid.uuid4().hex[:4]}"
        self.template = f"{self.prefix}_tmpl"
        self._numbers = itertools.count(1)
        self._template_ready = False
        self._dropper = _Dropper(admin_dsn)
        self._maker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pg-copier")
        self._spare: Future[str] | None = None  # the next test's copy, being made
        # One sweeper is enough: the first xdist worker, or a session without xdist.
        if os.environ.get("PYTEST_XDIST_WORKER", "gw0") == "gw0":
            self._drop_stale()

    def _drop_stale(self) -> None:
        """Drops (in the background) what killed sessions of this machine left behind."""
        stale: list[str] = []
        # A courtesy (e.g. no free connection slot right now): the tests do not depend on it.
        with contextlib.suppress(Exception):
            stale = asyncio.run(_stale_databases(self.admin_dsn))
        for name in stale:
            self._dropper.drop(name, best_effort=True)

    def url(self, name: str) -> str:
        base = self.admin_dsn.rsplit("/", 1)[0]
        return f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"

    def _new_name(self) -> str:
        return f"{self.prefix}_{next(self._numbers)}"

    def _build_template(self) -> None:
        run_statement(self.admin_dsn, f'CREATE DATABASE "{self.template}"')

        async def upgrade() -> None:
            async with Engine(self.url(self.template)) as engine:
                await engine.upgrade()

        asyncio.run(upgrade())
        # Nobody may connect to it any more: CREATE DATABASE ... TEMPLATE refuses a source
        # database with sessions on it.
        run_statement(self.admin_dsn, f'ALTER DATABASE "{self.template}" ALLOW_CONNECTIONS false')
        self._template_ready = True

    def _copy(self) -> str:
        name = self._new_name()
        run_statement(self.admin_dsn, f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        return name

    def at_head(self) -> str:
        """A new database with the engine's schema at head; returns its name."""
        if not self._template_ready:
            self._build_template()
        spare, self._spare = self._spare, None
        name = None
        if spare is not None:
            with contextlib.suppress(Exception):  # e.g. no free slot then: a copy made now
                name = spare.result()
        if name is None:
            name = self._copy()
        self._spare = self._maker.submit(self._copy)
        return name

    def empty(self) -> str:
        """A new database without any table; returns its name."""
        name = self._new_name()
        run_statement(self.admin_dsn, f'CREATE DATABASE "{name}"')
        return name

    def drop(self, name: str) -> None:
        self._dropper.drop(name)

    def close(self) -> list[str]:
        """Drops the template after every copy; returns what could not be dropped."""
        if self._spare is not None:
            with contextlib.suppress(Exception):
                self._dropper.drop(self._spare.result())
            self._spare = None
        self._maker.shutdown()
        if self._template_ready:
            self._dropper.drop(self.template)
        return self._dropper.join()
