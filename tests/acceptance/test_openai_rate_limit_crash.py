"""kill -9 of `engine run` while a run waits out a 429: the wait is a row with a due time, so
a new worker finishes the run, sending the rate-limited request once more and nothing else."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import use_fake_openai

from integrations.openai.testing import FakeOpenAIProcess

pytestmark = [pytest.mark.slow]
ROUTE = "POST /v1/chat/completions"


@pytest.fixture
def fake_server() -> Iterator[FakeOpenAIProcess]:
    with FakeOpenAIProcess() as fake:
        yield fake


def _due_at(db: Path, run_id: str) -> datetime:
    with sqlite3.connect(db) as conn:
        (due,) = conn.execute(
            "SELECT due_at FROM engine_tasks WHERE run_id = ? AND key = 'chat'", (run_id,)
        ).fetchone()
    return datetime.fromisoformat(due).replace(tzinfo=UTC)


def test_kill_during_a_rate_limit_wait_loses_nothing(
    procs: Any,
    fake_server: FakeOpenAIProcess,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_fake_openai(monkeypatch, fake_server.base_url)
    fake_server.fail_next(
        ROUTE, status=429, reset_requests="10m0s", message="Rate limit reached for requests"
    )
    first = procs.worker("openai_limits.py", sqlite_url)
    run_id = procs.start(sqlite_url, "oa-chat")
    procs.wait_status(sqlite_url, run_id, "WAITING", timeout=60)
    db = tmp_path / "engine.db"
    due = _due_at(db, run_id)
    # The full reset OpenAI gave (10 minutes), not the retry policy's 60 s cap.
    assert due - datetime.now(UTC) > timedelta(minutes=8)
    first.kill9()

    # Nothing was held in the killed worker: the wait is in the database, due as it was.
    assert _due_at(db, run_id) == due
    view = procs.view(sqlite_url, run_id)
    assert view["status"] == "WAITING" and view["tasks"][0]["status"] == "WAITING"
    # Ten minutes pass (moved, not slept): the due time and the run's wake-up are now.
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE engine_tasks SET due_at = ? WHERE run_id = ?", (now, run_id))
        conn.execute("UPDATE engine_runs SET wake_at = ? WHERE id = ?", (now, run_id))
    procs.worker("openai_limits.py", sqlite_url)
    procs.wait_status(sqlite_url, run_id, "COMPLETED", timeout=60)
    view = procs.view(sqlite_url, run_id)
    assert view["output"] == "echo: hello there"
    assert view["tasks"][0]["attempts"] == 2
    assert fake_server.count(ROUTE) == 2
