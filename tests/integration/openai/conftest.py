"""Fixtures for the OpenAI integration: the fake server, an integration pointed at it, and a
harness that runs a job on a real SQLite file with the real scheduler, in-process."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import Harness

from engine import Job, RetryPolicy
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

API_KEY = "sk-test-DO-NOT-RECORD-0123456789abcdef"


class OpenAIHarness:
    """Runs one job to its end and reads back what it recorded."""

    def __init__(self, harness: Harness, db_path: Path) -> None:
        self.harness = harness
        self.db_path = db_path
        self.engine = harness.engine

    async def run(self, job: Job, payload: Any = None, timeout: float = 20.0) -> dict[str, Any]:
        """Triggers `job` (with a scheduler of its own) and returns the final run row."""
        await self.harness.start(job)
        run_id = await self.engine.trigger(job.id, payload)
        return await self.engine.wait_for(run_id, timeout)

    async def tasks(self, run_id: str) -> list[dict[str, Any]]:
        """The run's task rows in the order they were first reached."""
        rows = await self.engine.store.get_tasks(run_id)
        return sorted(rows, key=lambda r: r["seq"])

    async def task(self, run_id: str, key: str) -> dict[str, Any]:
        found = [t for t in await self.tasks(run_id) if t["key"] == key]
        assert len(found) == 1, f"no single task {key!r}: {[t['key'] for t in found]}"
        return found[0]

    def dump(self) -> str:
        """Every row of every table of the database file, as text."""
        lines: list[str] = []
        with sqlite3.connect(self.db_path) as conn:
            tables = [
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    lines.append(f"{table}: {row!r}")
        return "\n".join(lines)


# Fast schedules for tests: polls every 20-100 ms, retries after 50 ms (or what the fake asks).
TEST_RETRY = RetryPolicy(max_attempts=4, min_delay=0.05, max_delay=2.0)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(run_seconds=0.15, file_seconds=0.1, response_seconds=0.15) as server:
        yield server


@pytest.fixture
async def integration(fake: FakeOpenAI) -> AsyncIterator[OpenAI]:
    created = OpenAI(
        api_key=API_KEY,
        base_url=fake.base_url,
        poll_interval=0.02,
        max_poll_interval=0.1,
        poll_timeout=30,
        retry=TEST_RETRY,
    )
    yield created
    await created.aclose()


@pytest.fixture
async def oai(tmp_path: Path) -> AsyncIterator[OpenAIHarness]:
    db_path = tmp_path / "engine.db"
    harness = Harness(f"sqlite+aiosqlite:///{db_path}")
    try:
        yield OpenAIHarness(harness, db_path)
    finally:
        await harness.close()


@pytest.fixture
def api_key() -> str:
    return API_KEY
