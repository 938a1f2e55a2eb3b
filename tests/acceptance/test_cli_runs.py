"""`engine trigger`, `engine runs list/show/cancel/retry` and `engine db upgrade` against a real
worker process, checked through what the CLI prints."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

RUN_KEYS = {
    "id",
    "job_id",
    "version",
    "status",
    "payload",
    "output",
    "error",
    "created_at",
    "started_at",
    "completed_at",
    "waiting_for",
    "delayed_until",
    "deadline_at",
    "parent_run_id",
    "priority",
}
# `show` only: the run's parent task and its child runs (docs/triggers.md, "Child runs"), and
# its tokens and cost (null without paid calls: docs/usage.md).
SHOW_KEYS = {"parent_task", "child_runs", "usage"}
TASK_KEYS = {
    "key",
    "name",
    "status",
    "attempts",
    "params",
    "output",
    "error",
    "started_at",
    "completed_at",
    "attempt_history",
    "usage",
    "children",
}
ISO_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(\+00:00|Z)$")


@dataclass
class World:
    procs: Any
    url: str
    tmp: Path


@pytest.fixture(scope="module")
def world(module_procs: Any) -> World:
    """One SQLite database with a worker running apps/basic.py for the whole module."""
    url = f"sqlite+aiosqlite:///{module_procs.cwd / 'engine.db'}"
    module_procs.worker("basic.py", url)
    return World(module_procs, url, module_procs.cwd)


def check_time(value: Any, nullable: bool = False) -> datetime | None:
    if value is None:
        assert nullable, "a time is null where it must be set"
        return None
    assert isinstance(value, str) and ISO_MICROS.match(value), f"not ISO 8601 UTC+µs: {value!r}"
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


def check_task(task: dict[str, Any]) -> None:
    assert set(task) == TASK_KEYS, sorted(task)
    check_time(task["started_at"], nullable=True)
    check_time(task["completed_at"], nullable=True)
    assert isinstance(task["children"], list)
    for child in task["children"]:
        check_task(child)


def test_show_json_has_exactly_the_contract_shape(world: World) -> None:
    run_id = world.procs.trigger(world.url, "steps", {"hello": "world"})
    assert re.fullmatch(r"\S+", run_id)
    world.procs.wait_status(world.url, run_id, "COMPLETED")
    view = world.procs.show(world.url, run_id)

    assert set(view) == RUN_KEYS | SHOW_KEYS | {"tasks"}, sorted(view)
    assert view["id"] == run_id
    assert view["job_id"] == "steps"
    assert view["status"] == "COMPLETED"
    assert view["payload"] == {"hello": "world"}
    assert view["output"] == {"a": {"inner": "in"}, "b": [1, 2, 3]}
    assert view["error"] is None
    created = check_time(view["created_at"])
    started = check_time(view["started_at"])
    completed = check_time(view["completed_at"])
    assert created and started and completed and created <= started <= completed

    for task in view["tasks"]:
        check_task(task)
    outer, second = view["tasks"]
    assert (outer["key"], second["key"]) == ("outer", "second")
    assert outer["name"] == "outer" and second["name"] == "second"
    assert outer["status"] == second["status"] == "COMPLETED"
    assert outer["attempts"] == 1 and second["attempts"] == 1
    assert outer["params"] == {"p": 1}
    assert outer["output"] == {"inner": "in"} and second["output"] == [1, 2, 3]
    assert outer["error"] is None
    [inner] = outer["children"]
    assert inner["key"] == "inner" and inner["status"] == "COMPLETED"
    assert inner["output"] == "in" and inner["children"] == []
    assert second["children"] == []
    o_start, o_end = check_time(outer["started_at"]), check_time(outer["completed_at"])
    i_start, i_end = check_time(inner["started_at"]), check_time(inner["completed_at"])
    assert o_start and o_end and i_start and i_end
    assert o_start <= i_start <= i_end <= o_end


def test_human_show_lists_task_keys_and_statuses(world: World) -> None:
    run_id = world.procs.trigger(world.url, "steps")
    world.procs.wait_status(world.url, run_id, "COMPLETED")
    out = world.procs.ok("runs", "show", run_id, "--database-url", world.url)
    assert run_id in out
    assert "steps" in out
    for key in ("outer", "inner", "second"):
        assert re.search(rf"\b{key}\b.*COMPLETED", out), f"{key} COMPLETED not in:\n{out}"
    # The subtask is drawn below its parent.
    assert out.index("outer") < out.index("inner") < out.index("second")


def test_list_json_and_its_filters(world: World) -> None:
    typed = world.procs.trigger(world.url, "typed", {"n": 5})
    world.procs.wait_status(world.url, typed, "COMPLETED")
    sleeping = world.procs.trigger(world.url, "sleeper", {"seconds": 60})
    world.procs.wait_status(world.url, sleeping, "WAITING")

    runs = world.procs.list(world.url)
    assert isinstance(runs, list) and runs
    for run in runs:
        assert set(run) == RUN_KEYS, sorted(run)
        check_time(run["created_at"])
    ids = [r["id"] for r in runs]
    assert typed in ids and sleeping in ids
    created = [datetime.fromisoformat(r["created_at"]) for r in runs]
    assert created == sorted(created, reverse=True), "runs list is newest first"

    only_typed = world.procs.list(world.url, "--job", "typed")
    assert only_typed and {r["job_id"] for r in only_typed} == {"typed"}
    assert typed in [r["id"] for r in only_typed]

    waiting = world.procs.list(world.url, "--status", "WAITING")
    assert {r["status"] for r in waiting} == {"WAITING"}
    assert sleeping in [r["id"] for r in waiting] and typed not in [r["id"] for r in waiting]

    both = world.procs.list(world.url, "--status", "COMPLETED", "--job", "typed")
    assert typed in [r["id"] for r in both]
    assert {(r["status"], r["job_id"]) for r in both} == {("COMPLETED", "typed")}
    assert world.procs.list(world.url, "--job", "no-such-job") == []

    # The human list shows the runs too.
    out = world.procs.ok("runs", "list", "--database-url", world.url)
    assert typed in out and sleeping in out
    world.procs.ok("runs", "cancel", sleeping, "--database-url", world.url)


def test_idempotency_key_gives_one_run(world: World) -> None:
    first = world.procs.trigger(world.url, "typed", {"n": 7}, key="order-7")
    second = world.procs.trigger(world.url, "typed", {"n": 7}, key="order-7")
    assert first == second
    world.procs.wait_status(world.url, first, "COMPLETED")
    # Once completed, the key still gives the same run and creates nothing.
    assert world.procs.trigger(world.url, "typed", {"n": 7}, key="order-7") == first
    typed_runs = [r for r in world.procs.list(world.url, "--job", "typed") if r["id"] == first]
    assert len(typed_runs) == 1
    assert sum((r["payload"] or {}).get("n") == 7 for r in world.procs.list(world.url)) == 1
    # Another key is another run.
    other = world.procs.trigger(world.url, "typed", {"n": 7}, key="order-8")
    assert other != first


def test_cancel_a_waiting_run(world: World) -> None:
    run_id = world.procs.trigger(world.url, "sleeper", {"seconds": 30})
    world.procs.wait_status(world.url, run_id, "WAITING")
    out = world.procs.ok("runs", "cancel", run_id, "--database-url", world.url)
    assert run_id in out
    view = world.procs.show(world.url, run_id)
    assert view["status"] == "CANCELED"
    check_time(view["completed_at"])
    statuses = {t["key"]: t["status"] for t in view["tasks"]}
    assert statuses == {"before": "COMPLETED", "nap": "CANCELED"}
    # Canceling again is a user error, and the run stays canceled.
    again = world.procs.cli("runs", "cancel", run_id, "--database-url", world.url)
    assert again.returncode != 0 and len(again.stderr.strip().splitlines()) == 1
    assert world.procs.status(world.url, run_id) == "CANCELED"


def test_retry_a_failed_run_from_where_it_failed(world: World) -> None:
    log, marker = world.tmp / "flaky.log", world.tmp / "flaky.marker"
    payload = {"log": str(log), "marker": str(marker)}
    run_id = world.procs.trigger(world.url, "flaky", payload)
    world.procs.wait_status(world.url, run_id, "FAILED")
    failed = world.procs.show(world.url, run_id)
    assert failed["error"]["type"] == "RuntimeError"
    assert "marker file is missing" in failed["error"]["message"]
    assert [(t["key"], t["status"]) for t in failed["tasks"]] == [
        ("first", "COMPLETED"),
        ("second", "ERRORED"),
    ]
    assert failed["tasks"][1]["error"]["type"] == "RuntimeError"
    assert world.procs.lines(log) == ["first", "second"]

    marker.touch()
    world.procs.ok("runs", "retry", run_id, "--database-url", world.url)
    world.procs.wait_status(world.url, run_id, "COMPLETED")
    done = world.procs.show(world.url, run_id)
    assert done["output"] == "second done"
    assert done["error"] is None
    assert [(t["key"], t["status"]) for t in done["tasks"]] == [
        ("first", "COMPLETED"),
        ("second", "COMPLETED"),
    ]
    # The task that completed before the failure did not run again.
    assert world.procs.lines(log) == ["first", "second", "second"]


def test_db_upgrade_on_a_fresh_file(procs: Any, tmp_path: Path) -> None:
    db = tmp_path / "fresh" / "engine.db"
    db.parent.mkdir()
    url = f"sqlite+aiosqlite:///{db}"
    out = procs.ok("db", "upgrade", "--database-url", url)
    assert out.strip()
    assert db.exists()
    assert procs.list(url) == []
    procs.ok("db", "upgrade", "--database-url", url)  # idempotent
    assert procs.list(url) == []


def test_default_database_is_engine_db_in_the_cwd(procs: Any, tmp_path: Path) -> None:
    """Without --database-url or ENGINE_DATABASE_URL: ./engine.db in the working directory."""
    out = procs.ok("db", "upgrade")
    assert out.strip()
    assert (tmp_path / "engine.db").exists()
    assert procs.ok("runs", "list", "--json").strip() == "[]"
