"""Every recorded or logged error is scrubbed of every secret the engine knows (INVARIANTS 8):
the OpenAI integration's key and the database password, even when user code leaks them."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

import forked
import pytest
from support import Harness, unique_id

from engine import IO, Context, Integration, Job, Task, job
from engine.secrets import REDACTED
from integrations.openai import OpenAI

ENGINE = str(Path(sys.executable).parent / "engine")


def _leaky_job(secret: str, integrations: dict[str, Integration[Any]]) -> Job:
    @job(id=unique_id("leaky"), integrations=integrations)
    async def leaky(payload: Any, io: IO, ctx: Context) -> None:
        async def call(task: Task) -> None:
            raise RuntimeError(f"bad key {secret}")

        io.logger.warn(f"calling with {secret}", key=secret, nested={"k": [secret]})
        await io.run_task("call", call)

    return leaky


def _runs_show_json(url: str, run_id: str) -> str:
    result = forked.run(
        [ENGINE, "runs", "show", run_id, "--json", "--database-url", url], text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return str(result.stdout)


async def _run_and_check(
    url: str, leaky: Job, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="engine")
    harness = Harness(url)
    try:
        await harness.start(leaky)
        view = await harness.run(leaky, timeout=60)
        logs = await harness.engine.run_logs(view["id"])
    finally:
        await harness.close()
    assert view["status"] == "FAILED"
    task = view["tasks"][0]
    assert task["error"]["message"] == f"bad key {REDACTED}"
    assert "RuntimeError: bad key" in task["error"]["traceback"]
    assert secret not in json.dumps(view)
    assert secret not in json.dumps(logs, default=str)
    assert logs and logs[0]["message"] == f"calling with {REDACTED}"
    shown = _runs_show_json(url, view["id"])
    assert "bad key" in shown and secret not in shown
    worker_log = caplog.text + "".join(str(r.exc_text) for r in caplog.records)
    assert "bad key" in worker_log  # the worker did log the failure...
    assert secret not in worker_log  # ...scrubbed


async def test_an_api_key_leaked_by_user_code_is_scrubbed(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    api_key = f"sk-user-code-leak-{uuid.uuid4().hex}"
    # The integration is attached but never called: the engine knows its key all the same.
    integration = OpenAI(api_key=api_key, base_url="http://127.0.0.1:9/v1")
    await _run_and_check(sqlite_url, _leaky_job(api_key, {"openai": integration}), api_key, caplog)


async def test_the_database_password_leaked_by_user_code_is_scrubbed(
    pg_head_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The test server trusts every local connection: any password is accepted.
    password = f"pw-{uuid.uuid4().hex}"
    url = pg_head_url.replace("postgres@", f"postgres:{password}@", 1)
    assert password in url
    await _run_and_check(url, _leaky_job(password, {}), password, caplog)
