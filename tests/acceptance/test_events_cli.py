"""Events and signals through the real CLI and real `engine run` processes: a `kill -9` while a
run waits loses nothing and repeats no completed step; `engine events send`, `engine events
list` and `engine runs signal` print what they did, and refuse bad input in one line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from faults import TcpProxy, with_port

from engine import Engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _show(url: str, run_id: str) -> dict[str, Any]:
    """The run as `runs show --json` prints it, read in-process (cheaper than a CLI per poll)."""

    async def read() -> dict[str, Any]:
        async with Engine(url) as engine:
            return await engine.show_run(run_id)

    return asyncio.run(read())


def _waiting_on(procs: Any, url: str, run_id: str, key: str) -> bool:
    shown = _show(url, run_id)
    tasks = {t["key"]: t["status"] for t in shown["tasks"]}
    return bool(shown["status"] == "WAITING" and tasks.get(key) == "WAITING")


def test_kill9_during_an_event_wait_then_the_event_then_a_new_worker(
    procs: Any, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    run_id = procs.trigger(db_url, "awaits-review", {"log": str(log), "doc": 7}, app="events.py")
    first = procs.worker("events.py", db_url)
    procs.wait_until(lambda: _waiting_on(procs, db_url, run_id, "review"), 60, "the wait")
    shown = _show(db_url, run_id)
    assert shown["waiting_for"]["reason"] == "event"
    assert "doc.reviewed" in shown["waiting_for"]["summary"]
    first.kill9()

    # No worker runs: the event settles the wait in the database, and waits for a worker.
    payload = tmp_path / "review.json"
    payload.write_text(json.dumps({"doc": 7, "verdict": "approved"}))
    sent = procs.ok("events", "send", "doc.reviewed", "--payload", f"@{payload}", "--id",
                    "review-7", "--database-url", db_url)  # fmt: skip
    assert sent.strip() == "review-7"
    again = procs.cli("events", "send", "doc.reviewed", "--payload", '{"doc": 7}', "--id",
                      "review-7", "--database-url", db_url)  # fmt: skip
    assert again.returncode == 0 and again.stdout.strip() == "review-7"
    assert "sent before: nothing delivered again" in again.stderr

    procs.worker("events.py", db_url)
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=60)
    done = procs.show(db_url, run_id)
    assert done["output"] == {"doc": 7, "verdict": "approved"}
    assert procs.counts(log) == {"before": 1, "after": 1}
    assert {t["key"]: t["attempts"] for t in done["tasks"]}["before"] == 1

    listed = json.loads(procs.ok("events", "list", "--json", "--database-url", db_url))
    assert [(e["id"], e["woke"], e["started"]) for e in listed] == [("review-7", 1, 0)]


def test_signals_from_the_cli_survive_a_kill9_and_refuse_bad_targets(
    procs: Any, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    run_id = procs.trigger(db_url, "awaits-signal", {"log": str(log)}, app="events.py")
    first = procs.worker("events.py", db_url)
    procs.wait_until(lambda: _waiting_on(procs, db_url, run_id, "go"), 60, "the wait")
    first.kill9()
    out = procs.ok("runs", "signal", run_id, "go", "--payload", '{"ok": true}', "--id", "go-1",
                   "--database-url", db_url)  # fmt: skip
    assert "its wait for 'go' is over" in out
    # The same id again: nothing sent (the run would otherwise keep a second signal).
    again = procs.cli("runs", "signal", run_id, "go", "--payload", '{"ok": false}', "--id",
                      "go-1", "--database-url", db_url)  # fmt: skip
    assert again.returncode == 0 and again.stdout == "", str(again)
    assert again.stderr == f"run {run_id} already has signal go-1: nothing sent again\n"
    procs.worker("events.py", db_url)
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=60)
    assert _show(db_url, run_id)["output"] == {"ok": True}
    assert procs.counts(log) == {"before": 1, "after": 1}

    for args, message in (
        (["runs", "signal", run_id, "go"], f"run {run_id} is already COMPLETED"),
        (["runs", "signal", "no-such-run", "go"], "no run has id 'no-such-run'"),
        (["runs", "signal", run_id, "go", "--payload", "{nope"], "--payload is not valid JSON"),
        (["events", "send", "x", "--payload", "{nope"], "--payload is not valid JSON"),
    ):
        result = procs.cli(*args, "--database-url", db_url)
        assert result.returncode == 1, str(result)
        assert result.stderr.startswith("error: ") and message in result.stderr, str(result)
        assert len(result.stderr.strip().splitlines()) == 1, str(result)


def test_an_on_event_job_gets_one_run_per_event(procs: Any, db_url: str) -> None:
    procs.worker("events.py", db_url)
    for n in (1, 2, 2, 3):
        procs.ok("events", "send", "order.placed", "--payload", json.dumps({"order": n}),
                 "--id", f"order-{n}", "--database-url", db_url)  # fmt: skip
    runs = procs.list(db_url, "--job", "on-order")
    assert len(runs) == 3
    for run in runs:
        procs.wait_status(db_url, run["id"], "COMPLETED", timeout=60)
    orders = sorted(_show(db_url, r["id"])["output"]["order"] for r in runs)
    assert orders == [1, 2, 3]


@pytest.mark.postgres
def test_events_send_without_an_id_survives_a_lost_commit_answer(
    procs: Any, pg_head_url: str, tmp_path: Path
) -> None:
    """`engine events send` (no --id) whose commit's answer is lost: the command retries, the
    waiting run is woken once, the on_event job gets one run, and it says nothing about a
    duplicate."""
    log = tmp_path / "steps.log"
    payload = {"log": str(log), "doc": 3}
    run_id = procs.trigger(pg_head_url, "awaits-review", payload, app="events.py")
    procs.worker("events.py", pg_head_url)
    procs.wait_until(lambda: _waiting_on(procs, pg_head_url, run_id, "review"), 60, "the wait")
    with TcpProxy("127.0.0.1", 5432) as proxy:
        proxy.cut_after_commit(b"INSERT INTO engine_events")
        result = procs.cli("events", "send", "doc.reviewed", "--payload", '{"doc": 3}', "--json",
                           "--database-url", with_port(pg_head_url, proxy.port))  # fmt: skip
        assert proxy.commits_cut == 1
    assert result.returncode == 0 and result.stderr == "", str(result)
    sent = json.loads(result.stdout)
    assert (sent["created"], sent["woke"], sent["started"]) == (True, [run_id], []), sent
    procs.wait_status(pg_head_url, run_id, "COMPLETED", timeout=60)
    assert procs.counts(log) == {"before": 1, "after": 1}
    listed = json.loads(procs.ok("events", "list", "--json", "--database-url", pg_head_url))
    assert [(e["id"], e["woke"]) for e in listed] == [(sent["id"], 1)]
