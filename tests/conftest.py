"""Shared fixtures: database URLs (a SQLite file, a throwaway PostgreSQL database) and an
in-process worker harness for integration tests."""

from __future__ import annotations

import os
import sys

# Compiled modules are cached even where the environment says not to (PYTHONDONTWRITEBYTECODE,
# set on this project's machines): every xdist worker, fork server and Python the tests start
# would otherwise compile the engine, and rewrite the test modules' asserts, again, seconds of
# CPU each. Set before the engine is first imported, and for the processes the tests start.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

from collections.abc import AsyncIterator, Iterator  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import reaper  # noqa: E402
from pgdatabases import PgDatabases, run_statement  # noqa: E402
from support import Harness  # noqa: E402

from engine import clock  # noqa: E402

PG_ADMIN_DSN = os.environ.get("ENGINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")

# Workers for the whole suite or a folder (pyproject's `-n auto`): tests mostly wait for
# `engine` processes, PostgreSQL and timers, so one worker more than cores pays (on 2 cores, 3
# workers: 3:44 against 4:47 with 2), but every worker adds its own processes and databases to a
# machine other sessions share, and 4 were no faster than 3 there.
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many xdist workers `-n auto` starts: ENGINE_TEST_WORKERS if set; none (the tests run
    in this process, without xdist's start-up) when only files or single tests are named;
    else one per core plus one, at least 2 and at most MAX_WORKERS."""
    wanted = os.environ.get("ENGINE_TEST_WORKERS", "").strip()
    if wanted:
        try:
            return max(0, int(wanted))
        except ValueError:
            raise pytest.UsageError(
                f"ENGINE_TEST_WORKERS={wanted!r}: expected a number of workers (0: no xdist)"
            ) from None
    here = config.invocation_params.dir
    named = [(here / arg.split("::", 1)[0]) for arg in config.args]
    if named and all(path.is_file() for path in named):
        return 0
    return max(2, min((os.cpu_count() or 1) + 1, MAX_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    """In the main process and in every xdist worker: a SIGTERM (CI's `timeout`) kills the
    processes the tests started before pytest ends (tests/reaper.py)."""
    reaper.install()


# The longest units of work, each on one xdist worker (`xdist_group`): started first, so that no
# worker is still on one when the others have run out of tests (the doc test, ~30 s; a cold
# mypy, ~15-30 s).
FIRST_GROUPS = ("docs-sqlite", "user-mypy")


def _group(item: pytest.Item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return str(marker.args[0]) if marker is not None and marker.args else None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Iterator[None]:
    """FIRST_GROUPS first; then, on an xdist worker with `--dist loadgroup`, checks that every
    test marked `xdist_group` carries its group in its id (xdist tags it in this hook), else
    xdist spreads the group over the workers, quietly, and each worker runs the group's shared
    fixture (the doc test's: every document) on its own."""
    items.sort(key=lambda item: _group(item) not in FIRST_GROUPS)
    yield
    if not config.getoption("loadgroup", False):
        return
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group")]
    lost = [nodeid for nodeid in lost if "@" not in nodeid.rsplit("]", 1)[-1]]
    if lost:
        raise pytest.UsageError(
            f"--dist loadgroup does not group {lost[0]} (and {len(lost) - 1} more): this "
            "pytest and pytest-xdist do not work together (pytest-dev/pytest-xdist#1386); "
            "install the versions pyproject.toml's `test` extra allows"
        )


def _pg_reachable() -> str | None:
    """None when PostgreSQL answers, else the reason it does not. A server with no free
    connection slot right now is waited for (`pgdatabases.SLOT_WAIT`), not skipped: a busy
    machine must not quietly turn the PostgreSQL tests into skips."""
    try:
        run_statement(PG_ADMIN_DSN, "SELECT 1")
    except Exception as exc:
        return f"PostgreSQL not reachable at {PG_ADMIN_DSN} ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(scope="session")
def pg_server() -> str:
    reason = _pg_reachable()
    if reason:
        pytest.skip(reason)
    return PG_ADMIN_DSN


@pytest.fixture(scope="session")
def pg_databases(pg_server: str) -> Iterator[PgDatabases]:
    """This session's throwaway databases (one template at head, copied per test)."""
    databases = PgDatabases(pg_server)
    yield databases
    leaked = databases.close()
    assert not leaked, f"test databases left behind: {leaked}"


@pytest.fixture
def pg_url(pg_databases: PgDatabases) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = pg_databases.empty()
    try:
        yield pg_databases.url(name)
    finally:
        pg_databases.drop(name)


@pytest.fixture
def pg_head_url(pg_databases: PgDatabases) -> Iterator[str]:
    """A fresh PostgreSQL database with the engine's schema at head, copied from the session's
    template (no migration runs), dropped afterwards. Prefer it to `pg_url` unless the test
    is about an empty database: it is the cheaper one."""
    name = pg_databases.at_head()
    try:
        yield pg_databases.url(name)
    finally:
        pg_databases.drop(name)


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """Each test using it runs once on SQLite and once on PostgreSQL. The PostgreSQL database
    has the schema already (`pg_head_url`), the SQLite file does not exist yet (creating it is
    as fast as copying it): a test that needs the tables calls `upgrade()`, cheap at head."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    return str(request.getfixturevalue("pg_head_url"))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """`db_url` without any table on either database (tests of the migrations themselves, and
    of commands that must not create the schema)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(autouse=True)
def _reset_clock() -> Iterator[None]:
    yield
    clock.reset()


@pytest.fixture
async def harness(db_url: str) -> AsyncIterator[Harness]:
    h = Harness(db_url)
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture
async def sqlite_harness(sqlite_url: str) -> AsyncIterator[Harness]:
    h = Harness(sqlite_url)
    try:
        yield h
    finally:
        await h.close()
