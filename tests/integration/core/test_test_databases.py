"""The test suite's throwaway PostgreSQL databases: a session drops those a killed session of
this machine left behind, and never one whose creating process still runs."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable

import pytest
from pgdatabases import PREFIX, PgDatabases, _Owner, _stale_databases, run_statement
from pgdatabases import _execute as execute

pytestmark = pytest.mark.postgres


def _dead_owner() -> _Owner:
    """The owner of a process that ran on this machine and is gone."""
    proc = subprocess.Popen(["sleep", "60"])
    started = _Owner.start_of(proc.pid)
    proc.kill()
    proc.wait(10)
    machine = _Owner.this_machine()
    assert machine and started
    return _Owner(machine, proc.pid, started)


def test_only_databases_of_dead_processes_of_this_machine_are_stale(pg_server: str) -> None:
    me = _Owner.me()
    if me is None:
        pytest.skip("no /proc here: no database is ever called stale")
    dead = _dead_owner()
    assert dead.is_dead() and not me.is_dead()
    left = f"{PREFIX}{dead.machine}_{dead.pid}_{dead.started}_dead_tmpl"
    live = f"{PREFIX}{me.machine}_{me.pid}_{me.started}_beef_1"
    other_machine = f"{PREFIX}00000000_{dead.pid}_{dead.started}_0bad_1"
    legacy = f"{PREFIX}{dead.pid}_abcdef_1"  # the old scheme: its owner cannot be told
    names = [left, live, other_machine, legacy]
    for name in names:
        run_statement(pg_server, f'CREATE DATABASE "{name}"')
    try:
        assert [_Owner.of(name) is not None for name in names] == [True, True, True, False]
        # What a session's sweep drops (in the background, with whatever else is stale: the
        # test does not wait for those).
        stale = set(asyncio.run(_stale_databases(pg_server)))
        assert left in stale and not stale & {live, other_machine, legacy}, stale
    finally:  # at once: each DROP DATABASE waits for a checkpoint, concurrent ones share it
        drops = [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names]
        asyncio.run(_gather(*(execute(pg_server, drop) for drop in drops)))


async def _gather(*statements: Awaitable[None]) -> None:
    await asyncio.gather(*statements)


async def _names(dsn: str, prefix: str) -> set[str]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        query = "SELECT datname FROM pg_database WHERE datname LIKE $1"
        rows = await conn.fetch(query, f"{prefix}%")
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


def test_copies_are_made_one_ahead_and_every_one_is_dropped(pg_server: str) -> None:
    databases = PgDatabases(pg_server)
    given: list[str] = []
    try:
        given += [databases.at_head(), databases.at_head()]
        assert given[0] != given[1]
        # The next test's copy, made while this one runs, is a third database.
        assert databases._spare is not None
        spare = databases._spare.result(timeout=60)
        assert spare not in given
        assert {*given, spare} <= asyncio.run(_names(pg_server, databases.prefix))
    finally:
        for name in given:
            databases.drop(name)
        assert databases.close() == []
    # Nothing left: neither the copies given out, nor the spare, nor the template.
    assert asyncio.run(_names(pg_server, databases.prefix)) == set()
