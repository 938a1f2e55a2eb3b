"""Streams across processes: `engine runs stream` follows a streamed chat completion while the
fake holds the rest of it, resumes with --after after a reconnect, and the call is replayed from
the record after `kill -9` of the worker (the fake, in its own process, counts the requests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from support import FAKE_OPENAI_KEY, use_fake_openai

from integrations.openai.testing import FakeOpenAIProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PROMPT = "one two three four five six"
REPLY = f"echo: {PROMPT}"
# The chunks of the reply: the role, one per word, the finish reason, the usage.
CHUNKS = 1 + len(REPLY.split()) + 2
# A held answer pauses after the role and the first half of its words.
BEFORE_HOLD = 1 + (len(REPLY.split()) + 1) // 2
ROUTE = "POST /v1/chat/completions"


@pytest.fixture(scope="module")
def fake_process() -> Iterator[FakeOpenAIProcess]:
    with FakeOpenAIProcess() as fake:
        yield fake


@pytest.fixture
def fake(fake_process: FakeOpenAIProcess) -> Iterator[FakeOpenAIProcess]:
    fake_process.reset()
    yield fake_process
    fake_process.release()


def _text(chunks: list[dict[str, Any]]) -> str:
    return "".join(
        c["data"]["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if c["data"]["choices"]
    )


def test_a_stream_is_followed_from_another_process_and_replayed_after_kill_9(
    procs: Any,
    fake: FakeOpenAIProcess,
    db_url: str,
    flag_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_fake_openai(monkeypatch, fake.base_url)
    fake.hold("streams")
    first = procs.worker("streams.py", db_url)
    run_id = procs.start(db_url, "stream-chat", {"prompt": PROMPT, "gate": flag_server.url})
    follow = ("runs", "stream", run_id, "answer", "--json", "--database-url", db_url)

    # A reader in another process sees the first chunks while the call is still in progress.
    reader = procs.follow(*follow)
    seen = [json.loads(reader.line()) for _ in range(3)]
    assert [c["seq"] for c in seen] == [1, 2, 3]
    procs.wait_until(lambda: fake.paused_streams() == 1, 60, "the answer to pause half-way")
    assert procs.status(db_url, run_id) == "RUNNING"
    # It loses its connection; a new one resumes after the last chunk it saw.
    reader.close()
    reader = procs.follow(*follow, "--after", str(seen[-1]["seq"]))
    seen += [json.loads(reader.line()) for _ in range(BEFORE_HOLD - 3)]
    assert [c["seq"] for c in seen] == list(range(1, BEFORE_HOLD + 1))
    assert fake.paused_streams() == 1 and fake.count(ROUTE) == 1

    fake.release("streams")
    seen += [json.loads(reader.line()) for _ in range(CHUNKS - BEFORE_HOLD)]
    assert [c["seq"] for c in seen] == list(range(1, CHUNKS + 1))
    assert _text(seen) == REPLY and seen[-1]["data"]["usage"]["total_tokens"] > 0
    assert all(c["task"] == ["answer"] and c["attempt"] == 1 for c in seen)

    # The call completed; the run waits at its gate. Its worker dies.
    procs.wait_status(db_url, run_id, "WAITING", timeout=60)
    first.kill9()
    procs.worker("streams.py", db_url)
    flag_server.ready.set()
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=60)
    end = reader.rest(60)
    assert end.returncode == 0 and end.stdout == "", str(end)
    view = procs.view(db_url, run_id)
    # The new worker replayed the recorded response: no second request.
    assert fake.count(ROUTE) == 1
    assert view["output"]["text"] == REPLY
    answer = next(t for t in view["tasks"] if t["key"] == "answer")
    assert answer["status"] == "COMPLETED" and answer["attempts"] == 1
    assert FAKE_OPENAI_KEY not in json.dumps(view)
    # Read again from the start once the run is over: every chunk once, then the end.
    again = procs.ok(*follow)
    assert [json.loads(line) for line in again.splitlines()] == seen


def test_a_call_cut_off_by_kill_9_mid_stream_runs_again_after_a_restart_marker(
    procs: Any,
    fake: FakeOpenAIProcess,
    sqlite_url: str,
    flag_server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    use_fake_openai(monkeypatch, fake.base_url)
    fake.hold("streams")
    first = procs.worker("streams.py", sqlite_url)
    run_id = procs.start(sqlite_url, "stream-chat", {"prompt": PROMPT, "gate": flag_server.url})
    follow = ("runs", "stream", run_id, "answer", "--json", "--database-url", sqlite_url)
    reader = procs.follow(*follow)
    cut = [json.loads(reader.line()) for _ in range(BEFORE_HOLD)]
    procs.wait_until(lambda: fake.paused_streams() == 1, 60, "the answer to pause half-way")
    first.kill9()  # mid-stream: the task is RUNNING, its attempt lost with the worker
    fake.release("streams")

    procs.worker("streams.py", sqlite_url)
    again = [json.loads(reader.line(60)) for _ in range(CHUNKS)]
    flag_server.ready.set()
    procs.wait_status(sqlite_url, run_id, "COMPLETED", timeout=60)
    assert reader.rest(60).returncode == 0
    # The lost attempt's chunks stay; the re-run's follow them, its first flagged `restart`.
    assert all(c["attempt"] == 1 for c in cut) and all(c["attempt"] == 2 for c in again)
    assert again[0]["restart"] and not any(c["restart"] for c in again[1:])
    assert _text(again) == REPLY
    assert fake.count(ROUTE) == 2
    view = procs.view(sqlite_url, run_id)
    answer = next(t for t in view["tasks"] if t["key"] == "answer")
    assert answer["status"] == "COMPLETED" and answer["attempts"] == 2
    # For people: the text stream says on stderr where the output starts again.
    shown = procs.cli("runs", "stream", run_id, "answer", "--database-url", sqlite_url)
    assert shown.returncode == 0
    assert "task 'answer' runs again (attempt 2)" in shown.stderr
    assert len(shown.stdout.splitlines()) == BEFORE_HOLD + CHUNKS
