"""Version routing with real workers: a trigger without --version goes to the highest version a
live worker serves, whichever was registered last; `--version` pins one; `engine jobs list`
shows the versions and the live workers; a worker killed with -9 stops being live."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pytest

from engine import Engine

pytestmark = pytest.mark.slow


def _jobs(url: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        async with Engine(url) as engine:
            return {j["job_id"]: j for j in await engine.jobs()}

    return asyncio.run(read())


def _served_by(url: str, version: str) -> list[str]:
    listed = _jobs(url)["versioned"]["versions"]
    return next(v["worker_ids"] for v in listed if v["version"] == version)


def test_new_triggers_go_to_the_highest_live_version_not_the_last_registered(
    procs: Any, db_url: str, tmp_path: Path
) -> None:
    def ran(*options: str) -> str:
        run_id = procs.ok("trigger", "versioned", "--database-url", db_url, *options).strip()
        procs.wait_status(db_url, run_id, "COMPLETED", timeout=30)
        return str(procs.view(db_url, run_id)["output"]["version"])

    new = procs.worker("versioned_new.py", db_url, lease=1)
    # An old worker started after the new one, to drain old runs: it registers 1.9 last.
    old = procs.worker("versioned_old.py", db_url, lease=5)
    assert ran() == "1.10"
    assert ran("--version", "1.9") == "1.9"

    refused = procs.cli("trigger", "versioned", "--version", "3", "--database-url", db_url)
    assert refused.returncode == 1, str(refused)
    assert refused.stderr.strip().splitlines() == [
        "error: job 'versioned' has no version '3' registered (registered: 1.9, 1.10): "
        "pass one of those, or start a worker with that version's code"
    ]

    listed = json.loads(procs.ok("jobs", "list", "--json", "--database-url", db_url))
    (versioned,) = [j for j in listed if j["job_id"] == "versioned"]
    assert versioned["default_version"] == "1.10"
    assert [(v["version"], v["live_workers"], v["worker_ids"]) for v in versioned["versions"]] == [
        ("1.9", 1, [old.id]),
        ("1.10", 1, [new.id]),
    ]
    assert all(v["registered_at"] for v in versioned["versions"])
    table = procs.ok("jobs", "list", "--database-url", db_url)
    assert "versioned" in table and old.id in table and new.id in table, table

    new.kill9()
    procs.wait_until(lambda: _served_by(db_url, "1.10") == [], 30, "1.10 to have no live worker")
    assert _jobs(db_url)["versioned"]["default_version"] == "1.9"
    assert ran() == "1.9"

    old.signal(signal.SIGTERM)
    assert old.wait(20) == 0, old.output
    assert _served_by(db_url, "1.9") == []  # a clean stop removes the worker's row at once
