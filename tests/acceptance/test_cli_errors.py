"""A user's mistake costs one clear line: `engine` exits non-zero with one line on stderr, no
traceback, and nothing already recorded is lost."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/nope"


@dataclass
class World:
    procs: Any
    url: str
    completed: str  # the id of a COMPLETED run of "typed"
    before: list[dict[str, Any]]  # `runs list --json` once the world was built


@pytest.fixture(scope="module")
def world(module_procs: Any) -> World:
    """A SQLite database with the jobs of apps/basic.py registered and one COMPLETED run."""
    url = f"sqlite+aiosqlite:///{module_procs.cwd / 'engine.db'}"
    run_id = module_procs.trigger(url, "typed", {"n": 21}, app="basic.py")
    worker = module_procs.worker("basic.py", url)
    module_procs.wait_status(url, run_id, "COMPLETED", timeout=20)
    worker.close()
    return World(module_procs, url, run_id, module_procs.list(url))


def one_line_error(result: Any) -> str:
    """The command failed the way a user's mistake should; returns the line it printed."""
    assert result.returncode != 0, str(result)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, str(result)
    err: list[str] = result.stderr.strip().splitlines()
    assert len(err) == 1, f"expected one line on stderr:\n{result}"
    assert result.stdout.strip() == "", f"nothing on stdout expected:\n{result}"
    return err[0]


def nothing_lost(world: World) -> None:
    assert world.procs.list(world.url) == world.before


def test_the_world_is_as_built(world: World) -> None:
    assert [r["id"] for r in world.before] == [world.completed]
    assert world.before[0]["status"] == "COMPLETED"
    assert world.before[0]["output"] == {"doubled": 42, "label": "x"}


def test_unknown_job_id(world: World) -> None:
    line = one_line_error(world.procs.cli("trigger", "no-such-job", "--database-url", world.url))
    assert "no-such-job" in line
    nothing_lost(world)


def test_bad_payload_json(world: World) -> None:
    result = world.procs.cli("trigger", "typed", "--payload", "{n: 1", "--database-url", world.url)
    line = one_line_error(result)
    assert "JSON" in line
    nothing_lost(world)


def test_payload_invalid_against_the_registered_schema(world: World) -> None:
    """Without --app, the trigger validates against the JSON schema the worker registered."""
    for payload in ['{"n": "not a number"}', '{"label": "no n"}', "[1, 2]"]:
        result = world.procs.cli(
            "trigger", "typed", "--payload", payload, "--database-url", world.url
        )
        line = one_line_error(result)
        assert "typed" in line and "invalid" in line
    nothing_lost(world)


def test_payload_invalid_against_the_model_with_app(world: World) -> None:
    """With --app, the trigger validates with the job's pydantic model."""
    app = str(Path(__file__).parent / "apps" / "basic.py")
    result = world.procs.cli(
        "trigger", "typed", "--payload", '{"n": "x"}', "--app", app, "--database-url", world.url
    )
    line = one_line_error(result)
    assert "invalid" in line and "n" in line
    nothing_lost(world)


def test_payload_schema_on_a_fresh_database_with_app(procs: Any, tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    app = str(Path(__file__).parent / "apps" / "basic.py")
    one_line_error(
        procs.cli("trigger", "typed", "--payload", "{}", "--app", app, "--database-url", url)
    )
    assert not (tmp_path / "fresh.db").exists()  # a trigger that fails writes nothing
    # The valid payload goes through and is stored as the model dumps it.
    run_id = procs.trigger(url, "typed", {"n": 1}, app="basic.py")
    assert procs.show(url, run_id)["payload"] == {"n": 1, "label": "x"}


@pytest.mark.parametrize(
    "args",
    [
        ["runs", "list", "--json"],
        ["trigger", "typed", "--payload", '{"n": 1}'],
        ["runs", "show", "0123"],
    ],
    ids=["list", "trigger", "show"],
)
def test_unreachable_database(procs: Any, args: list[str]) -> None:
    line = one_line_error(procs.cli(*args, "--database-url", UNREACHABLE, timeout=60))
    assert "127.0.0.1:1" in line


def test_worker_on_an_unreachable_database(procs: Any) -> None:
    app = str(Path(__file__).parent / "apps" / "basic.py")
    one_line_error(procs.cli("run", app, "--database-url", UNREACHABLE, timeout=60))


def test_database_url_that_is_not_a_url(procs: Any) -> None:
    one_line_error(procs.cli("runs", "list", "--database-url", "not a url"))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("mysql://u:hunter2-secret@h/db", "use sqlite:///PATH or sqlite+aiosqlite:///PATH"),
        ("postgresql+asyncpg://u:hunter2-secret@h:abc/db", "the port is not a number"),
        ("postgresql+asyncpg://u@h:abc/db", "the port is not a number"),
        ("postgresql+asyncpg//u:hunter2-secret@h/db", "is not a URL"),
    ],
    ids=["unsupported", "bad-port-with-password", "bad-port", "malformed"],
)
@pytest.mark.parametrize("command", ["list", "run"])
def test_bad_database_url_is_one_line_without_the_password(
    procs: Any, url: str, says: str, command: str
) -> None:
    app = str(Path(__file__).parent / "apps" / "basic.py")
    args = ["runs", "list"] if command == "list" else ["run", app]
    line = one_line_error(procs.cli(*args, "--database-url", url))
    assert says in line
    assert "hunter2" not in line


def test_missing_module_for_run(world: World) -> None:
    line = one_line_error(world.procs.cli("run", "no.such.module", "--database-url", world.url))
    assert "no.such.module" in line


def test_missing_app_file_for_trigger(world: World) -> None:
    result = world.procs.cli("trigger", "x", "--app", "missing.py", "--database-url", world.url)
    line = one_line_error(result)
    assert "missing.py" in line
    nothing_lost(world)


def test_app_that_raises_on_import(world: World, tmp_path: Path) -> None:
    app = tmp_path / "broken_app.py"
    app.write_text("raise ValueError('boom at import')\n")
    line = one_line_error(world.procs.cli("run", str(app), "--database-url", world.url))
    assert "boom at import" in line


def test_show_unknown_run(world: World) -> None:
    line = one_line_error(world.procs.cli("runs", "show", "nope123", "--database-url", world.url))
    assert "nope123" in line
    line = one_line_error(
        world.procs.cli("runs", "show", "nope123", "--json", "--database-url", world.url)
    )
    assert "nope123" in line


def test_retry_of_a_completed_run(world: World) -> None:
    result = world.procs.cli("runs", "retry", world.completed, "--database-url", world.url)
    line = one_line_error(result)
    assert "COMPLETED" in line


def test_cancel_of_a_completed_run(world: World) -> None:
    result = world.procs.cli("runs", "cancel", world.completed, "--database-url", world.url)
    line = one_line_error(result)
    assert "COMPLETED" in line
    nothing_lost(world)


def test_retry_or_cancel_of_an_unknown_run(world: World) -> None:
    for command in ("retry", "cancel"):
        line = one_line_error(
            world.procs.cli("runs", command, "nope456", "--database-url", world.url)
        )
        assert "nope456" in line


def test_list_with_an_unknown_status(world: World) -> None:
    line = one_line_error(
        world.procs.cli("runs", "list", "--status", "DONE", "--database-url", world.url)
    )
    assert "DONE" in line


def test_a_recorded_run_survives_every_failed_command(world: World) -> None:
    """After all the mistakes above, the run is still exactly as it was recorded."""
    shown = world.procs.show(world.url, world.completed)
    assert shown["status"] == "COMPLETED"
    assert shown["output"] == {"doubled": 42, "label": "x"}
    assert [t["key"] for t in shown["tasks"]] == ["double"]
    nothing_lost(world)


def test_reading_a_missing_sqlite_database_says_so_and_creates_nothing(procs: Any) -> None:
    result = procs.cli("runs", "list")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: no engine database at engine.db")
    assert not (procs.cwd / "engine.db").exists()
