"""kill -9 of `engine run` during each kind of OpenAI wait: the run finishes on a new worker and
the create behind the wait was sent exactly once (counted by the fake server, in its own
process)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai as openai_sdk
import pytest
from support import FAKE_OPENAI_KEY, use_fake_openai

from integrations.openai.testing import FakeOpenAIProcess

# The bare client below uses the Assistants API, which openai-python marks deprecated.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def fake_process() -> Iterator[FakeOpenAIProcess]:
    """The fake OpenAI in a separate process, so that it outlives the workers it counts. Objects
    finish fast unless a test holds them: nothing here depends on the machine's speed. One for
    the module: starting it takes seconds on a busy machine."""
    with FakeOpenAIProcess() as fake:
        yield fake


@pytest.fixture
def fake_server(fake_process: FakeOpenAIProcess) -> FakeOpenAIProcess:
    """The module's fake, emptied: no object, request, fault or hold of an earlier test."""
    fake_process.reset()
    return fake_process


def _polls(fake: FakeOpenAIProcess) -> int:
    """GET requests the fake received: the workers' polls of the objects they wait on."""
    return sum(n for route, n in fake.stats()["by_route"].items() if route.startswith("GET "))


def _task(view: dict[str, Any], key: str) -> dict[str, Any]:
    return next(t for t in view["tasks"] if t["key"] == key)


# job id -> (wait key, create route, final status, what the fake holds in progress)
CASES = {
    "oa-file": ("upload", "POST /v1/files", "processed", "files"),
    "oa-thread-run": ("thread-run", "POST /v1/threads/runs", "completed", "runs"),
    "oa-run": ("run", "POST /v1/threads/{thread_id}/runs", "completed", "runs"),
    "oa-wait-run": ("wait", "POST /v1/threads/{thread_id}/runs", "completed", "runs"),
    "oa-response": ("respond", "POST /v1/responses", "completed", "responses"),
}


@pytest.mark.parametrize("job_id", sorted(CASES))
def test_kill_during_an_openai_wait_resumes_without_repeating_the_create(
    job_id: str,
    procs: Any,
    fake_server: FakeOpenAIProcess,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    wait_key, create_route, final_status, held = CASES[job_id]
    use_fake_openai(monkeypatch, fake_server.base_url)
    client = openai_sdk.OpenAI(
        base_url=fake_server.base_url, api_key=FAKE_OPENAI_KEY, max_retries=0
    )
    assistant = client.beta.assistants.create(model="gpt-4o", name="crash test")
    thread = client.beta.threads.create()
    client.close()
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    payload = {"assistant_id": assistant.id, "thread_id": thread.id, "path": str(data)}
    before = fake_server.count(create_route)
    # The object behind the wait stays in progress until released, however slow the machine:
    # the run is WAITING for as long as the test needs to look at it and kill the worker.
    fake_server.hold(held)

    first = procs.worker("openai_waits.py", sqlite_url)
    run_id = procs.start(sqlite_url, job_id, payload)
    procs.wait_status(sqlite_url, run_id, "WAITING", timeout=60)
    create_key = f"{wait_key}:create" if job_id != "oa-wait-run" else "create-run"
    # The worker polls the held object (a GET on it) without finishing the wait.
    polls = _polls(fake_server)
    procs.wait_until(lambda: _polls(fake_server) > polls, 60, "a poll of the held object")
    view = procs.view(sqlite_url, run_id)
    assert view["status"] == "WAITING"
    assert _task(view, wait_key)["status"] == "WAITING"
    assert _task(view, create_key)["status"] == "COMPLETED"
    first.kill9()

    procs.worker("openai_waits.py", sqlite_url)
    assert procs.view(sqlite_url, run_id)["status"] == "WAITING"
    fake_server.release(held)
    procs.wait_status(sqlite_url, run_id, "COMPLETED", timeout=60)
    view = procs.view(sqlite_url, run_id)
    assert view["output"]["status"] == final_status
    assert _task(view, wait_key)["status"] == "COMPLETED"
    assert fake_server.count(create_route) - before == 1
    assert FAKE_OPENAI_KEY not in json.dumps(view)


def test_a_400_fails_the_run_with_openais_message_in_runs_show(
    procs: Any, fake_server: FakeOpenAIProcess, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake_openai(monkeypatch, fake_server.base_url)
    fake_server.fail_next(
        "POST /v1/responses", status=400, message="Invalid value for 'model': no such model"
    )

    procs.worker("openai_waits.py", sqlite_url)
    run_id = procs.start(sqlite_url, "oa-response")
    procs.wait_status(sqlite_url, run_id, "FAILED", timeout=20)
    shown = procs.ok("runs", "show", run_id, "--database-url", sqlite_url)
    assert "Invalid value for 'model': no such model" in shown
    view = procs.view(sqlite_url, run_id)
    create = _task(view, "respond:create")
    assert create["status"] == "ERRORED" and create["attempts"] == 1
    assert create["error"]["status_code"] == 400
    assert fake_server.count("POST /v1/responses") == 1
