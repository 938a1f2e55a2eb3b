"""Shared rate limits with real `engine run` processes (3 on PostgreSQL, 1 on SQLite).

The generic steps record the time they ran (apps/ratelimited.py): from those times the test
checks that the fleet kept to the limit. The OpenAI runs go to the fake server with its
requests-per-minute limit on: what it refused (its counter) and the x-ratelimit-remaining
header of every answer (recorded per task) show whether the fleet ever ran its bucket dry.
Conditions are waited for with generous deadlines; nothing sleeps and then asserts.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import text
from support import use_fake_openai

from engine import Engine
from integrations.openai.testing import FakeOpenAIProcess

pytestmark = [pytest.mark.slow]


@pytest.fixture(params=["postgres-3-workers", "sqlite-1-worker"])
def fleet(request: pytest.FixtureRequest) -> tuple[str, int]:
    """(database URL, number of workers): 3 workers on PostgreSQL, 1 on SQLite."""
    if request.param.startswith("postgres"):
        return str(request.getfixturevalue("pg_url")), 3
    return str(request.getfixturevalue("sqlite_url")), 1


@pytest.fixture(scope="module")
def fake_process() -> Iterator[FakeOpenAIProcess]:
    """One fake OpenAI for the module (each start imports openai in a new process)."""
    with FakeOpenAIProcess(requests_per_minute=60) as fake:
        yield fake


@pytest.fixture
def fake_server(fake_process: FakeOpenAIProcess) -> FakeOpenAIProcess:
    """The module's fake, emptied (no request counted, buckets full); each test sets the
    limits it is about."""
    fake_process.reset()
    return fake_process


def trigger_all(url: str, job_id: str, payloads: list[dict[str, Any]]) -> list[str]:
    async def go() -> list[str]:
        async with Engine(url) as engine:
            return [await engine.trigger(job_id, p) for p in payloads]

    return asyncio.run(go())


def query(url: str, sql: str) -> list[Any]:
    async def go() -> list[Any]:
        async with Engine(url) as engine, engine.store.begin() as conn:
            return list((await conn.execute(text(sql))).all())

    return asyncio.run(go())


def start_fleet(procs: Any, url: str, workers: int) -> None:
    # Leases long enough that a loaded machine does not take runs over mid-call (a taken-over
    # call is sent again: more requests than calls, which these tests count).
    for _ in range(workers):
        procs.worker("ratelimited.py", url, concurrency=10, ready=False, lease=15.0)
    for w in procs.workers:
        w.wait_ready(60)


def test_a_generic_limit_holds_across_the_fleet(
    procs: Any, fleet: tuple[str, int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, workers = fleet
    monkeypatch.setenv("RL_CRM_PER_SECOND", "4")
    start_fleet(procs, url, workers)
    log = tmp_path / "calls.log"
    run_ids = trigger_all(url, "crm", [{"calls": 4, "log": str(log)}] * 6)
    for run_id in run_ids:
        procs.wait_status(url, run_id, "COMPLETED", timeout=180)

    lines = [line.split() for line in procs.lines(log)]
    # Every call ran once, on its first attempt.
    assert Counter((run, i) for _, run, i, _ in lines) == Counter(
        {(run, str(i)): 1 for run in run_ids for i in range(4)}
    )
    assert {attempt for *_, attempt in lines} == {"1"}
    times = sorted(float(t) for t, *_ in lines)
    # 24 calls at 4 a second: paced, not sent in a burst ...
    assert times[-1] - times[0] >= 23 * 0.25 - 0.05, times
    # ... and no second of the run holds more than the limit (one more for a late resume).
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert busiest <= 4 + 1, times


def test_openai_runs_finish_under_the_limit_with_no_429(
    procs: Any,
    fleet: tuple[str, int],
    fake_server: FakeOpenAIProcess,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, workers = fleet
    use_fake_openai(monkeypatch, fake_server.base_url)
    monkeypatch.setenv("RL_OPENAI_RPM", "600")
    # 600 requests a minute, held as 60 at most (6 s' worth, as a minute's worth of 60 a
    # minute would be): the fleet paces at 10 a second, so 30 calls take 3 s, not 30.
    fake_server.set_limits(requests_per_minute=600, burst_seconds=6)
    start_fleet(procs, url, workers)
    # Someone else spent 50 of the 60 just now: 10 are left, and one more comes every 0.1 s.
    # A fleet sending faster than that is refused.
    direct = openai.OpenAI(base_url=fake_server.base_url, api_key="sk-other", max_retries=0)
    for _ in range(50):
        direct.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    direct.close()
    assert fake_server.rate_limited() == 0
    run_ids = trigger_all(url, "oa-limited", [{"calls": 3}] * 10)
    for run_id in run_ids:
        procs.wait_status(url, run_id, "COMPLETED", timeout=300)

    # Zero 429s caused by the fleet: every call answered the first time.
    assert fake_server.rate_limited() == 0
    assert fake_server.count("POST /v1/chat/completions") == 50 + 30
    attempts = query(url, "SELECT attempts FROM engine_tasks WHERE kind = 'openai'")
    assert sorted(a for (a,) in attempts) == [1] * 30
    # The account's bucket never ran dry: the answers say how much was left.
    remaining = [_remaining(r) for (r,) in query(url, "SELECT rate_limits FROM engine_task_usage")]
    assert len(remaining) == 30 and min(remaining) >= 1, remaining


def test_a_fleet_never_bunches_past_a_one_second_bucket(
    procs: Any, pg_url: str, fake_server: FakeOpenAIProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """600 a minute, enforced as 10 a second (OpenAI may enforce a limit over shorter periods):
    3 workers' requests must come no closer together than the pace, give or take a second's
    worth, or the fake refuses them."""
    use_fake_openai(monkeypatch, fake_server.base_url)
    monkeypatch.setenv("RL_OPENAI_RPM", "600")
    fake_server.set_limits(requests_per_minute=600, burst_seconds=1)
    start_fleet(procs, pg_url, 3)
    run_ids = trigger_all(pg_url, "oa-limited", [{"calls": 3}] * 20)
    for run_id in run_ids:
        procs.wait_status(pg_url, run_id, "COMPLETED", timeout=300)

    assert fake_server.rate_limited() == 0
    assert fake_server.count("POST /v1/chat/completions") == 60
    attempts = query(pg_url, "SELECT attempts FROM engine_tasks WHERE kind = 'openai'")
    assert sorted(a for (a,) in attempts) == [1] * 60


def test_a_token_limit_holds_across_three_workers(
    procs: Any, pg_url: str, fake_server: FakeOpenAIProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12,000 tokens a minute, a bucket of 2 s' worth (400): each call is counted 58 by the
    fake, estimated 53 by the engine and corrected from the answer's usage."""
    use_fake_openai(monkeypatch, fake_server.base_url)
    monkeypatch.setenv("RL_OPENAI_TPM", "12000")
    fake_server.set_limits(tokens_per_minute=12_000, burst_seconds=2)
    fake_server.set_usage(completion_tokens=5)
    start_fleet(procs, pg_url, 3)
    run_ids = trigger_all(pg_url, "oa-tokens", [{"calls": 3}] * 10)
    for run_id in run_ids:
        procs.wait_status(pg_url, run_id, "COMPLETED", timeout=300)

    # Zero 429s caused by the fleet, every call answered the first time.
    assert fake_server.rate_limited() == 0
    assert fake_server.count("POST /v1/chat/completions") == 30
    attempts = query(pg_url, "SELECT attempts FROM engine_tasks WHERE kind = 'openai'")
    assert sorted(a for (a,) in attempts) == [1] * 30
    # Usage is what the fake answered, not the estimate.
    usage = query(
        pg_url, "SELECT prompt_tokens, completion_tokens, total_tokens FROM engine_task_usage"
    )
    assert sorted(usage) == [(8, 5, 13)] * 30
    # The limiter charged what OpenAI counts (8 + max_tokens 50 = 58 a call), not the estimate
    # (53) nor the usage (13): 30 calls hold the limit's next place 30 x 58 / 200 s ahead of
    # the first.
    ((tat,),) = query(pg_url, "SELECT tokens_tat FROM engine_rate_limits")
    first = min(
        t.timestamp()
        for (t,) in query(pg_url, "SELECT started_at FROM engine_tasks WHERE kind = 'openai'")
    )
    assert float(tat) >= first + 30 * 58 / 200 - 1.0


def _remaining(headers: Any) -> int:
    found = json.loads(headers) if isinstance(headers, str) else headers
    return int(found["x-ratelimit-remaining-requests"])


def test_kill_9_during_a_rate_limit_wait_loses_nothing(
    procs: Any, sqlite_url: str, tmp_path: Path
) -> None:
    worker = procs.worker("ratelimited.py", sqlite_url)
    log = tmp_path / "calls.log"
    payload = {"calls": 1, "log": str(log), "limit": "slow-api"}
    (first,) = trigger_all(sqlite_url, "crm", [payload])
    procs.wait_status(sqlite_url, first, "COMPLETED", timeout=60)
    # One call an hour: the second run waits, suspended, for the limit.
    (second,) = trigger_all(sqlite_url, "crm", [payload])
    procs.wait_status(sqlite_url, second, "WAITING", timeout=60)
    view = procs.view(sqlite_url, second)
    assert view["waiting_for"]["reason"] == "rate_limit", view
    assert view["waiting_for"]["rate_limit"] == "slow-api"
    (task,) = view["tasks"]
    assert (task["status"], task["attempts"]) == ("WAITING", 0), task
    human = procs.ok("runs", "list", "--status", "WAITING", "--database-url", sqlite_url)
    assert "rate limit slow-api until " in human, human
    worker.kill9()

    # Nothing was held by the killed worker: the wait is a row, and the hour passes (moved,
    # not slept) for a new worker to go on with the place the run reserved.
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with sqlite3.connect(tmp_path / "engine.db") as conn:
        conn.execute("UPDATE engine_tasks SET due_at = ? WHERE run_id = ?", (now, second))
        conn.execute("UPDATE engine_runs SET wake_at = ? WHERE id = ?", (now, second))
    procs.worker("ratelimited.py", sqlite_url)
    procs.wait_status(sqlite_url, second, "COMPLETED", timeout=120)
    lines = [line.split() for line in procs.lines(log)]
    assert [(run, attempt) for _, run, _, attempt in lines] == [(first, "1"), (second, "1")]
    (task,) = procs.view(sqlite_url, second)["tasks"]
    assert (task["status"], task["attempts"]) == ("COMPLETED", 1), task
