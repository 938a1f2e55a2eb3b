"""Concurrency limits, priority and "why is it waiting" with real `engine run` processes.

Runs are held inside their step by a gate file the test opens (apps/flow.py), and the jobs
record the highest number of their runs inside the step at once, under an fcntl lock: a limit
that was ever exceeded shows in that high-water mark, whatever the timing.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from engine import Engine

pytestmark = pytest.mark.slow


def record(path: Path) -> dict[str, int]:
    text = path.read_text() if path.exists() else ""
    return json.loads(text) if text else {}


def trigger_all(url: str, job_id: str, payloads: list[dict[str, Any]]) -> list[str]:
    async def go() -> list[str]:
        async with Engine(url) as engine:
            return [await engine.trigger(job_id, p) for p in payloads]

    return asyncio.run(go())


def statuses(url: str, run_ids: list[str]) -> dict[str, str]:
    async def go() -> dict[str, str]:
        async with Engine(url) as engine:
            return {r: str((await engine.get_run(r))["status"]) for r in run_ids}

    return asyncio.run(go())


def count(url: str, run_ids: list[str]) -> Counter[str]:
    return Counter(statuses(url, run_ids).values())


@pytest.fixture(params=["postgres-3-workers", "sqlite-1-worker"])
def fleet(request: pytest.FixtureRequest) -> tuple[str, int]:
    """(database URL, number of workers): 3 workers on PostgreSQL, 1 on SQLite."""
    if request.param.startswith("postgres"):
        return str(request.getfixturevalue("pg_url")), 3
    return str(request.getfixturevalue("sqlite_url")), 1


def test_a_concurrency_limit_holds_across_workers_and_every_run_finishes(
    procs: Any, fleet: tuple[str, int], tmp_path: Path
) -> None:
    url, workers = fleet
    for _ in range(workers):
        procs.worker("flow.py", url, concurrency=5, ready=False)
    for w in procs.workers:
        w.wait_ready()
    rec, gate = tmp_path / "record.json", tmp_path / "gate"
    # Triggered from this process, which lacks the job's code: the limit comes from the
    # registration the workers made.
    run_ids = trigger_all(url, "limited", [{"record": str(rec), "gate": str(gate)}] * 8)

    procs.wait_until(lambda: record(rec).get("all:now") == 2, 60, "2 runs inside the step")
    procs.wait_until(
        lambda: count(url, run_ids) == Counter({"RUNNING": 2, "QUEUED": 6}),
        60,
        "2 RUNNING and 6 QUEUED",
    )
    queued = procs.runs(url, "limited", "QUEUED")
    assert len(queued) == 6
    for run in queued:
        assert run["waiting_for"]["reason"] == "concurrency", run
        assert (run["waiting_for"]["running"], run["waiting_for"]["limit"]) == (2, 2)
        assert run["waiting_for"]["key"] == ""
    human = procs.ok("runs", "list", "--job", "limited", "--database-url", url)
    assert "concurrency slot (limited: 2/2 running)" in human, human
    running = [r for r, s in statuses(url, run_ids).items() if s == "RUNNING"]
    assert procs.view(url, running[0])["waiting_for"] is None

    gate.touch()
    for run_id in run_ids:
        procs.wait_status(url, run_id, "COMPLETED", timeout=60)
    final = record(rec)
    assert final["all:max"] == 2, final
    assert final["all:now"] == 0, final


@pytest.mark.postgres
def test_a_per_key_limit_holds_per_key_while_other_keys_run(
    procs: Any, pg_url: str, tmp_path: Path
) -> None:
    for _ in range(3):
        procs.worker("flow.py", pg_url, concurrency=5, ready=False)
    for w in procs.workers:
        w.wait_ready()
    rec = tmp_path / "record.json"

    def payload(customer: str) -> dict[str, Any]:
        return {"customer_id": customer, "record": str(rec), "gate": str(tmp_path / customer)}

    # The key is a function of the payload: only a process with the job's code can compute it.
    refused = procs.cli("trigger", "per-customer", "--payload", json.dumps(payload("A")),
                        "--database-url", pg_url)  # fmt: skip
    assert refused.returncode == 1, str(refused)
    assert refused.stderr.startswith("error: ") and "--app" in refused.stderr, str(refused)
    assert "Traceback" not in refused.stderr
    assert procs.runs(pg_url, "per-customer") == []

    a = [procs.trigger(pg_url, "per-customer", payload("A"), app="flow.py") for _ in range(3)]
    b = [procs.trigger(pg_url, "per-customer", payload("B"), app="flow.py") for _ in range(2)]
    procs.wait_until(
        lambda: (record(rec).get("A:now"), record(rec).get("B:now")) == (1, 1),
        60,
        "one run of each customer inside the step",
    )
    procs.wait_until(lambda: count(pg_url, a) == Counter({"RUNNING": 1, "QUEUED": 2}), 60, "A 1+2")
    procs.wait_until(lambda: count(pg_url, b) == Counter({"RUNNING": 1, "QUEUED": 1}), 60, "B 1+1")

    (tmp_path / "B").touch()
    for run_id in b:
        procs.wait_status(pg_url, run_id, "COMPLETED", timeout=60)
    # Customer B is done; customer A still runs one at a time, its others wait for their slot.
    assert count(pg_url, a) == Counter({"RUNNING": 1, "QUEUED": 2})
    waiting = [procs.view(pg_url, r)["waiting_for"] for r in a]
    slots = [w for w in waiting if w is not None]
    assert len(slots) == 2
    for w in slots:
        assert (w["reason"], w["job_id"], w["key"], w["running"], w["limit"]) == (
            "concurrency", "per-customer", "A", 1, 1,
        ), w  # fmt: skip
        assert w["summary"] == "concurrency slot (per-customer key 'A': 1/1 running)"

    (tmp_path / "A").touch()
    for run_id in a:
        procs.wait_status(pg_url, run_id, "COMPLETED", timeout=60)
    final = record(rec)
    assert (final["A:max"], final["B:max"], final["A:now"], final["B:now"]) == (1, 1, 0, 0)


def test_a_key_named_by_a_payload_field_is_computed_without_the_code(
    procs: Any, sqlite_url: str
) -> None:
    procs.worker("flow.py", sqlite_url)
    missing = procs.cli("trigger", "by-field", "--payload", '{"customer": {}}',
                        "--database-url", sqlite_url)  # fmt: skip
    assert missing.returncode == 1, str(missing)
    assert missing.stderr.startswith("error: ") and "'customer.id'" in missing.stderr
    assert procs.runs(sqlite_url, "by-field") == []
    run_id = procs.trigger(sqlite_url, "by-field", {"customer": {"id": 7}})
    procs.wait_status(sqlite_url, run_id, "COMPLETED")


def test_a_suspended_run_holds_no_slot(procs: Any, sqlite_url: str, flag_server: Any) -> None:
    procs.worker("flow.py", sqlite_url, concurrency=5)
    polling = procs.trigger(sqlite_url, "one-at-a-time", {"poll": flag_server.url})
    procs.wait_status(sqlite_url, polling, "WAITING")
    procs.wait_until(lambda: flag_server.hits > 0, 60, "the first poll")
    why = procs.view(sqlite_url, polling)["waiting_for"]
    assert (why["reason"], why["task"], why["poller"]) == ("poll", "poll", "http"), why
    assert why["next_poll_at"] is not None

    # The limit is 1 and the polling run is not done, yet another run goes through.
    quick = procs.trigger(sqlite_url, "one-at-a-time", {})
    procs.wait_status(sqlite_url, quick, "COMPLETED", timeout=60)
    assert procs.status(sqlite_url, polling) == "WAITING"

    flag_server.ready.set()
    procs.wait_status(sqlite_url, polling, "COMPLETED", timeout=60)
    assert procs.view(sqlite_url, polling)["output"] == {"answer": 42, "items": ["a", "b"]}


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_priority_order_holds_for_one_batch_with_one_worker(
    procs: Any, database: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = str(request.getfixturevalue("sqlite_url" if database == "sqlite" else "pg_url"))
    log = str(tmp_path / "order.log")
    # Registers the job (its default priority is 1) and queues the first run, priority 5.
    procs.ok("trigger", "ordered", "--payload", json.dumps({"log": log, "name": "b"}),
             "--priority", "5", "--app", str(Path(__file__).parent / "apps" / "flow.py"),
             "--database-url", url)  # fmt: skip

    async def rest() -> None:
        async with Engine(url) as engine:
            for name, priority in [("c", -3), ("a", None), ("d", 10), ("e", 5), ("f", None)]:
                await engine.trigger("ordered", {"log": log, "name": name}, priority=priority)

    asyncio.run(rest())
    queued = procs.runs(url, "ordered")
    assert {r["waiting_for"]["reason"] for r in queued} == {"worker"}
    # Each run's priority, in `runs list --json` and its PRIORITY column.
    assert sorted(r["priority"] for r in queued) == [-3, 1, 1, 5, 5, 10]
    table = procs.ok("runs", "list", "--job", "ordered", "--database-url", url).splitlines()
    assert "PRIORITY" in table[0] and sum(" -3 " in line for line in table[1:]) == 1, table

    procs.worker("flow.py", url, concurrency=1)
    procs.wait_until(lambda: len(procs.lines(Path(log))) == 6, 60, "six runs")
    assert procs.lines(Path(log)) == ["d", "b", "e", "a", "f", "c"]


def test_a_priority_out_of_range_is_one_clear_error(procs: Any, sqlite_url: str) -> None:
    procs.ok("db", "upgrade", "--database-url", sqlite_url)
    result = procs.cli("trigger", "ordered", "--priority", "1000", "--app",
                       str(Path(__file__).parent / "apps" / "flow.py"),
                       "--database-url", sqlite_url)  # fmt: skip
    assert result.returncode == 1, str(result)
    assert result.stderr.strip() == "error: priority=1000: use -100 to 100"
