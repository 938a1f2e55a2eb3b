"""The test suite's throwaway PostgreSQL databases: a session drops those a killed session of
this machine left behind, and never one whose creating process still runs."""

from __future__ import annotations

import asyncio
import subprocess

import asyncpg
import pytest
from pgdatabases import PREFIX, PgDatabases, _Owner, run_statement

pytestmark = pytest.mark.postgres


async def _exists(dsn: str, names: list[str]) -> set[str]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname = ANY($1)", names)
    finally:
        await conn.close()
    return {str(row["datname"]) for row in rows}


def _dead_owner() -> _Owner:
    """The owner of a process that ran on this machine and is gone."""
    proc = subprocess.Popen(["sleep", "60"])
    started = _Owner.start_of(proc.pid)
    proc.kill()
    proc.wait(10)
    machine = _Owner.this_machine()
    assert machine and started
    return _Owner(machine, proc.pid, started)


def test_a_session_drops_what_dead_sessions_left_and_keeps_live_ones(
    pg_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    me, dead = _Owner.me(), _dead_owner()
    if me is None:
        pytest.skip("no /proc here: no database is ever called stale")
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
        monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
        assert not PgDatabases(pg_server).close()
        assert asyncio.run(_exists(pg_server, names)) == {live, other_machine, legacy}
    finally:
        for name in names:
            run_statement(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
