"""Child runs under real `kill -9`: while a parent waits for its fanned-out children, every
worker is killed; new workers finish the tree with nothing lost, no child created twice and no
completed step repeated. `engine runs show` links parent and children both ways."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Engine

pytestmark = pytest.mark.slow

N = 12


def _read(url: str, fn: Callable[[Engine], Awaitable[Any]]) -> Any:
    """One call through the Python API (far cheaper than a CLI process per check)."""

    async def read() -> Any:
        async with Engine(url) as engine:
            return await fn(engine)

    return asyncio.run(read())


def _statuses(url: str, run_id: str) -> tuple[str, list[str]]:
    """The parent's status and its children's, in one read."""
    view = _read(url, lambda engine: engine.show_run(run_id))
    return view["status"], [c["status"] for c in view["child_runs"]]


def _workers(db_url: str) -> int:
    # PostgreSQL: three workers share the tree; SQLite: one.
    return 3 if db_url.startswith("postgresql") else 1


def test_kill9_while_a_parent_waits_for_its_children(
    procs: Any, db_url: str, tmp_path: Path, flag_server: Any
) -> None:
    log = tmp_path / "steps.log"
    payload = {"log": str(log), "n": N, "url": flag_server.url}
    first = [procs.worker("crash.py", db_url, concurrency=4) for _ in range(_workers(db_url))]
    run_id = _read(db_url, lambda engine: engine.trigger("fan-parent", payload))

    def all_children_wait() -> bool:
        parent, children = _statuses(db_url, run_id)
        return parent == "WAITING" and children == ["WAITING"] * N

    # The gate holds every child in its poll: the whole tree waits, for as long as needed.
    procs.wait_until(all_children_wait, 60, f"the parent and its {N} children to wait")
    for worker in first:
        worker.kill9()
    assert sorted(procs.lines(log)) == sorted(["before", *(f"work {i}" for i in range(N))])

    flag_server.ready.set()
    for _ in range(_workers(db_url)):
        procs.worker("crash.py", db_url, concurrency=4)
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=90)

    view = procs.show(db_url, run_id)
    assert view["output"] == [i * 10 for i in range(N)]
    children = view["child_runs"]
    assert len(children) == N  # none created twice
    assert [c["task"] for c in children] == [f"child-{i}" for i in range(N)]
    assert {c["status"] for c in children} == {"COMPLETED"}
    counts = procs.counts(log)
    expected = [
        "before",
        "after",
        *(f"work {i}" for i in range(N)),
        *(f"done {i}" for i in range(N)),
    ]
    assert counts == dict.fromkeys(expected, 1), counts  # no completed step ran twice

    # `runs show` links both ways, as text and as JSON.
    text = procs.ok("runs", "show", run_id, "--database-url", db_url)
    assert f"child runs: {N} ({N} COMPLETED)" in text, text
    assert f"{children[3]['id']}  fan-child  COMPLETED  task child-3" in text, text
    child = _read(db_url, lambda engine: engine.show_run(children[3]["id"]))
    assert (child["parent_run_id"], child["parent_task"]) == (run_id, "child-3")
    assert child["child_runs"] == [] and child["output"] == 30
    child_text = procs.ok("runs", "show", children[3]["id"], "--database-url", db_url)
    assert f"parent run: {run_id} (task child-3)" in child_text, child_text
    listed = _read(db_url, lambda engine: engine.list_runs())
    parents = {r["id"]: r["parent_run_id"] for r in listed}
    assert parents[run_id] is None and parents[children[0]["id"]] == run_id
    # `runs list --parent`: a run's children alone; an unknown run is one error line.
    assert {r["id"] for r in procs.list(db_url, "--parent", run_id)} == {c["id"] for c in children}
    assert procs.list(db_url, "--parent", children[0]["id"]) == []
    missing = procs.cli("runs", "list", "--parent", "0" * 32, "--database-url", db_url)
    assert missing.returncode == 1 and "Traceback" not in missing.stderr, str(missing)
    assert missing.stderr.strip() == (
        f"error: no run has id {'0' * 32!r}: `engine runs list` shows the runs there are"
    ), str(missing)
