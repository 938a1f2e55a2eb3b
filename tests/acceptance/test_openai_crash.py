"""kill -9 of `engine run` during each kind of OpenAI wait: the run finishes on a new worker and
the create behind the wait was sent exactly once (counted by the fake server, in its own
process)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai as openai_sdk
import pytest

# The bare client below uses the Assistants API, which openai-python marks deprecated.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

WAIT_SECONDS = "3"


@pytest.fixture
def fake_server() -> Iterator[str]:
    """The fake OpenAI in a separate process, slow enough to kill a worker mid-wait."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "integrations.openai.testing",
            "--port",
            "0",
            "--run-seconds",
            WAIT_SECONDS,
            "--file-seconds",
            WAIT_SECONDS,
            "--response-seconds",
            WAIT_SECONDS,
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line
        yield line.strip().rsplit(" ", 1)[-1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stdout:
            proc.stdout.close()


def _stats(base_url: str) -> dict[str, Any]:
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{root}/_fake/stats", timeout=10) as response:
        return json.loads(response.read())


def _task(view: dict[str, Any], key: str) -> dict[str, Any]:
    return next(t for t in view["tasks"] if t["key"] == key)


CASES = {
    "oa-file": ("upload", "POST /v1/files", "processed"),
    "oa-thread-run": ("thread-run", "POST /v1/threads/runs", "completed"),
    "oa-run": ("run", "POST /v1/threads/{thread_id}/runs", "completed"),
    "oa-wait-run": ("wait", "POST /v1/threads/{thread_id}/runs", "completed"),
    "oa-response": ("respond", "POST /v1/responses", "completed"),
}


@pytest.mark.parametrize("job_id", sorted(CASES))
def test_kill_during_an_openai_wait_resumes_without_repeating_the_create(
    job_id, procs, fake_server, sqlite_url, tmp_path, monkeypatch
):
    wait_key, create_route, final_status = CASES[job_id]
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-acceptance-secret-key")
    client = openai_sdk.OpenAI(
        base_url=fake_server, api_key="sk-acceptance-secret-key", max_retries=0
    )
    assistant = client.beta.assistants.create(model="gpt-4o", name="crash test")
    thread = client.beta.threads.create()
    client.close()
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    payload = {"assistant_id": assistant.id, "thread_id": thread.id, "path": str(data)}
    before = _stats(fake_server)["by_route"].get(create_route, 0)

    first = procs.worker("openai_waits.py", sqlite_url)
    run_id = procs.trigger(sqlite_url, job_id, payload)
    procs.wait_status(sqlite_url, run_id, "WAITING", timeout=20)
    view = procs.show(sqlite_url, run_id)
    assert _task(view, wait_key)["status"] == "WAITING"
    assert (
        _task(view, f"{wait_key}:create" if job_id != "oa-wait-run" else "create-run")["status"]
        == "COMPLETED"
    )
    first.kill9()

    procs.worker("openai_waits.py", sqlite_url)
    procs.wait_status(sqlite_url, run_id, "COMPLETED", timeout=40)
    view = procs.show(sqlite_url, run_id)
    assert view["output"]["status"] == final_status
    assert _task(view, wait_key)["status"] == "COMPLETED"
    assert _stats(fake_server)["by_route"].get(create_route, 0) - before == 1
    assert "sk-acceptance-secret-key" not in json.dumps(view)


def test_a_400_fails_the_run_with_openais_message_in_runs_show(
    procs, fake_server, sqlite_url, monkeypatch
):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-acceptance-secret-key")
    root = fake_server.rsplit("/v1", 1)[0]
    fault = json.dumps(
        {
            "route": "POST /v1/responses",
            "status": 400,
            "times": 1,
            "message": "Invalid value for 'model': no such model",
        }
    ).encode()
    request = urllib.request.Request(
        f"{root}/_fake/faults",
        data=fault,
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=10).close()

    procs.worker("openai_waits.py", sqlite_url)
    run_id = procs.trigger(sqlite_url, "oa-response")
    procs.wait_status(sqlite_url, run_id, "FAILED", timeout=20)
    shown = procs.ok("runs", "show", run_id, "--database-url", sqlite_url)
    assert "Invalid value for 'model': no such model" in shown
    view = procs.show(sqlite_url, run_id)
    create = _task(view, "respond:create")
    assert create["status"] == "ERRORED" and create["attempts"] == 1
    assert create["error"]["status_code"] == 400
    assert _stats(fake_server)["by_route"].get("POST /v1/responses", 0) == 1
