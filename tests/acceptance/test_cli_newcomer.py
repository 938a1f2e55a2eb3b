"""Issue 10, "a newcomer's first hour": the CLI's rough edges, each checked through the real CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import forked
import pytest


def _modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return set(out.split())


def test_importing_the_cli_does_not_import_heavy_libraries() -> None:
    # Every `engine` command, `--help` included, pays for what `engine.cli` imports.
    loaded = _modules_after("import engine.cli")
    heavy = {"sqlalchemy", "pydantic", "rich", "alembic", "jsonschema", "openai", "asyncio"}
    assert not heavy & {name.split(".")[0] for name in loaded}
    assert not {"engine.client", "engine.schema", "engine.store", "engine.worker"} & loaded


def test_the_public_api_is_still_importable_from_engine() -> None:
    loaded = _modules_after("from engine import Engine, job, IO, Worker, RetryPolicy, clock")
    assert {"engine.client", "engine.jobs", "engine.io", "engine.worker", "engine.clock"} <= loaded


# -- helpers ------------------------------------------------------------------------------------

ENGINE = str(Path(sys.executable).parent / "engine")
APPS = Path(__file__).parent / "apps"
BASIC = str(APPS / "basic.py")


def _cli_with_stdin(cwd: Path, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_DATABASE_URL"}
    return forked.run([ENGINE, *args], cwd=cwd, env=env, input=stdin, text=True, timeout=60)


def _one_error_line(result: Any) -> str:
    """The command failed like every user error: exit 1, one `error:` line, nothing on stdout."""
    assert result.returncode == 1, str(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), str(result)
    assert result.stdout.strip() == "", str(result)
    return str(lines[0])


def _url(request: pytest.FixtureRequest, dialect: str, tmp_path: Path) -> str:
    if dialect == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    return str(request.getfixturevalue("pg_url"))


DIALECTS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def _pg_tables(url: str) -> list[str]:
    import asyncpg

    async def read() -> list[str]:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            rows = await conn.fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        finally:
            await conn.close()
        return sorted(r["table_name"] for r in rows)

    return asyncio.run(read())


# -- -h and click's own usage errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["-h"], ["runs", "-h"], ["runs", "show", "-h"], ["trigger", "-h"], ["workers", "list", "-h"]],
)
def test_dash_h_is_help_everywhere(procs: Any, args: list[str]) -> None:
    result = procs.cli(*args)
    assert result.returncode == 0, str(result)
    assert result.stdout.startswith("Usage: engine"), str(result)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["runs", "show"], "missing argument 'RUN_ID'"),
        (["runs", "list", "--bogus"], "no such option '--bogus'"),
        (["run", "app.py", "--log-level", "LOUD"], "'LOUD' is not one of"),
        (["bogus"], "no such command 'bogus'"),
        (["runs", "list", "--limit", "many"], "'many' is not a valid integer"),
    ],
    ids=["missing-argument", "bad-option", "bad-choice", "no-such-command", "bad-type"],
)
def test_usage_errors_are_one_error_line_and_exit_1(procs: Any, args: list[str], says: str) -> None:
    line = _one_error_line(procs.cli(*args))
    assert says in line
    assert "--help`" in line  # where to look, on the same line


# -- database URLs ------------------------------------------------------------------------------


def test_an_unsupported_url_lists_exactly_the_schemes_that_work(procs: Any) -> None:
    line = _one_error_line(procs.cli("runs", "list", "--database-url", "mysql://u@h/db"))
    for scheme in (
        "sqlite:///",
        "sqlite+aiosqlite:///",
        "postgresql://",
        "postgres://",
        "postgresql+asyncpg://",
    ):
        assert scheme in line
    assert "mysql" in line


@pytest.mark.postgres
def test_a_postgres_scheme_url_works(procs: Any, pg_url: str) -> None:
    url = pg_url.replace("postgresql+asyncpg://", "postgres://", 1)
    assert procs.ok("db", "upgrade", "--database-url", url).strip() == "database is at head"
    run_id = procs.trigger(url, "typed", {"n": 2}, app="basic.py")
    assert [r["id"] for r in procs.list(url)] == [run_id]


# -- --limit ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dialect", DIALECTS)
def test_limit_below_one_is_refused_the_same_on_both_dialects(
    procs: Any, request: pytest.FixtureRequest, tmp_path: Path, dialect: str
) -> None:
    url = _url(request, dialect, tmp_path)
    first = procs.trigger(url, "typed", {"n": 1}, app="basic.py")
    second = procs.trigger(url, "typed", {"n": 2}, app="basic.py")
    for limit in ("-1", "0"):
        line = _one_error_line(procs.cli("runs", "list", "--limit", limit, "--database-url", url))
        assert f"{limit} is not in the range x>=1" in line
    assert [r["id"] for r in procs.list(url, "--limit", "1")] == [second]
    assert [r["id"] for r in procs.list(url, "--limit", "2")] == [second, first]

    async def python_api() -> None:
        from engine import Engine, EngineError

        async with Engine(url) as engine:
            with pytest.raises(EngineError, match="1 or more"):
                await engine.list_runs(limit=-1)

    asyncio.run(python_api())


# -- --payload @FILE and - ----------------------------------------------------------------------


def test_payload_from_a_file_and_from_stdin(procs: Any, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    # Larger than one command-line argument may be (128 KiB on Linux).
    big = {"n": 3, "label": "x" * 300_000}
    (tmp_path / "big.json").write_text(json.dumps(big))
    from_file = procs.ok(
        "trigger", "typed", "--payload", "@big.json", "--app", BASIC, "--database-url", url
    ).strip()
    assert procs.show(url, from_file)["payload"] == big

    piped = _cli_with_stdin(
        tmp_path,
        json.dumps({"n": 4}),
        "trigger",
        "typed",
        "--payload",
        "-",
        "--app",
        BASIC,
        "--database-url",
        url,
    )
    assert piped.returncode == 0, piped.stderr
    assert procs.show(url, piped.stdout.strip())["payload"] == {"n": 4, "label": "x"}


def test_a_missing_or_broken_payload_file_is_one_line_naming_it(procs: Any, tmp_path: Path) -> None:
    line = _one_error_line(procs.cli("trigger", "typed", "--payload", "@nope.json", "--app", BASIC))
    assert "'nope.json'" in line and "does not exist" in line
    (tmp_path / "broken.json").write_text('{"n": 1,')
    line = _one_error_line(procs.cli("trigger", "typed", "--payload", "@broken.json"))
    assert "'broken.json'" in line and "not valid JSON" in line and "line 1" in line
    piped = _cli_with_stdin(tmp_path, "{n: 1}", "trigger", "typed", "--payload", "-")
    assert "stdin" in _one_error_line(piped)
    assert not (tmp_path / "engine.db").exists()


# -- commands that fail or only read write nothing ----------------------------------------------

FAILING_TRIGGERS = [
    ["trigger", "typed"],  # not registered anywhere
    ["trigger", "typed", "--app", BASIC, "--payload", '{"n": "not a number"}'],
    ["trigger", "typed", "--app", BASIC, "--version", "7"],
    ["trigger", "typed", "--payload", "{bad json"],
]
READS = [
    ["runs", "list"],
    ["runs", "show", "0123"],
    ["runs", "cancel", "0123"],
    ["jobs", "list"],
    ["workers", "list"],
]


def test_failing_and_read_only_commands_create_no_sqlite_file(procs: Any, tmp_path: Path) -> None:
    for args in FAILING_TRIGGERS:
        _one_error_line(procs.cli(*args))  # on the default ./engine.db
    for args in READS:
        assert "no engine database at engine.db" in _one_error_line(procs.cli(*args))
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.postgres
def test_failing_and_read_only_commands_create_no_tables_on_postgres(
    procs: Any, pg_url: str
) -> None:
    for args in FAILING_TRIGGERS:
        _one_error_line(procs.cli(*args, "--database-url", pg_url))
    for args in READS:
        line = _one_error_line(procs.cli(*args, "--database-url", pg_url))
        assert "no engine tables: run `engine db upgrade`" in line
    assert _pg_tables(pg_url) == []


# -- jobs, workers, and triggers no worker serves -----------------------------------------------


@pytest.mark.slow
def test_workers_list_jobs_list_and_the_unserved_warning(procs: Any, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    args = ["trigger", "typed", "--payload", '{"n": 1}', "--app", BASIC, "--database-url", url]
    unserved = procs.cli(*args)
    assert unserved.returncode == 0, str(unserved)
    assert len(unserved.stdout.split()) == 1  # the run id, and only it, on stdout
    assert unserved.stderr.startswith("warning: no live worker serves job 'typed' version '1'")
    assert procs.status(url, unserved.stdout.strip()) == "QUEUED"
    assert json.loads(procs.ok("workers", "list", "--json", "--database-url", url)) == []

    worker = procs.worker("basic.py", url)
    live = json.loads(procs.ok("workers", "list", "--json", "--database-url", url))
    assert [w["worker_id"] for w in live] == [worker.id]
    assert live[0]["pid"] == worker.pid and "typed@1" in live[0]["jobs"]
    assert live[0]["started_at"] <= live[0]["last_seen_at"] < live[0]["expires_at"]
    assert str(worker.id) in procs.ok("workers", "list", "--database-url", url)

    jobs = {
        j["job_id"]: j
        for j in json.loads(procs.ok("jobs", "list", "--json", "--database-url", url))
    }
    typed = jobs["typed"]["versions"][0]
    assert typed["version"] == "1" and typed["worker_ids"] == [worker.id]
    assert typed["payload_schema"]["required"] == ["n"]

    served = procs.cli(*args)
    assert served.returncode == 0 and served.stderr == "", str(served)

    line = _one_error_line(procs.cli("trigger", "typd", "--database-url", url))
    assert "no job 'typd'" in line and "did you mean 'typed'?" in line


# -- runs list: the job version -----------------------------------------------------------------


def test_runs_list_shows_and_filters_by_version(procs: Any, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    old = procs.trigger(url, "versioned", {}, app="versioned_old.py")
    new = procs.trigger(url, "versioned", {}, app="versioned_new.py")
    runs = procs.list(url)
    assert [(r["id"], r["version"]) for r in runs] == [(new, "1.10"), (old, "1.9")]
    assert [r["id"] for r in procs.list(url, "--version", "1.9")] == [old]
    assert procs.list(url, "--version", "2") == []
    table = procs.ok("runs", "list", "--database-url", url).splitlines()
    assert "VERSION" in table[0]
    assert any(new in line and "1.10" in line for line in table)


def test_runs_show_on_sqlite_imports_only_what_it_reads_with(procs: Any, tmp_path: Path) -> None:
    # `engine runs show` is mostly import time (issue 10): a SQLite read needs SQLAlchemy Core
    # and aiosqlite, not the ORM, the PostgreSQL dialect or anything of the worker.
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    run_id = procs.trigger(url, "steps", {}, app="basic.py")
    code = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: print('MODULES', *sys.modules, file=sys.stderr))\n"
        "sys.argv = ['engine', 'runs', 'show', sys.argv[1], '--database-url', sys.argv[2]]\n"
        "runpy.run_module('engine', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, run_id, url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert run_id in result.stdout and "QUEUED" in result.stdout
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("MODULES ")]
    loaded = set(line.split()[1:])
    assert "engine.client" in loaded  # the command really read through the engine
    unwanted = {
        "sqlalchemy.orm",
        "sqlalchemy.dialects.postgresql",
        "asyncpg",
        "alembic",
        "pydantic",
        "jsonschema",
        "engine.worker",
        "engine.jobs",
    }
    assert not unwanted & loaded


def test_python_dash_m_engine_is_the_engine_command(tmp_path: Path) -> None:
    for args, code in ((["--version"], 0), (["runs", "list"], 1)):
        result = subprocess.run(
            [sys.executable, "-m", "engine", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == code, result.stderr
    assert result.stderr.startswith("error: no engine database at engine.db")
    help_text = subprocess.run(
        [sys.executable, "-m", "engine", "-h"], capture_output=True, text=True, timeout=60
    ).stdout
    assert help_text.startswith("Usage: engine ")
