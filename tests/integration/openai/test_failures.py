"""Failures: retry headers, retryable and final statuses, polls that fail or time out, a
missing key, and calls rejected before anything is recorded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import openai
import pytest
from support import unique_id

from engine import RetryPolicy, job
from integrations.openai import OpenAI
from integrations.openai.errors import (
    is_retryable_status,
    parse_duration,
    parse_retry_after,
    retry_after_from,
)
from integrations.openai.testing import FakeOpenAI

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_rejects_garbage() -> None:
    assert parse_duration("soon") is None
    assert parse_duration("1x") is None


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("2") == 2.0
    now = datetime(2030, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(30.0)
    assert parse_retry_after("whenever") is None


def test_retry_after_precedence() -> None:
    assert retry_after_from({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_from({"retry-after": "3", "x-ratelimit-reset-requests": "9s"}) == 3.0
    resets = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}
    assert retry_after_from(resets, "Rate limit reached for requests") == 1.0
    assert retry_after_from(resets, "Rate limit reached for tokens") == 360.0
    assert retry_after_from(resets) == 360.0
    assert retry_after_from({}) is None


def test_retryable_statuses() -> None:
    assert all(is_retryable_status(s) for s in (408, 409, 429, 500, 502, 503))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 422))
    assert not is_retryable_status(500, {"x-should-retry": "false"})


async def test_server_errors_are_retried(oai: Any, fake: FakeOpenAI, integration: OpenAI) -> None:
    fake.fail_next("POST /v1/chat/completions", 500, times=2)

    @job(id=unique_id("oai-500"), integrations={"openai": integration})
    async def flaky(payload: Any, io: Any, ctx: Any) -> Any:
        done = await io.openai.chat.completions.create("chat", **CHAT)
        return done.choices[0].message.content

    run = await oai.run(flaky)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == "echo: hi"
    row = await oai.task(run["id"], "chat")
    assert row["attempts"] == 3
    assert fake.count("POST /v1/chat/completions") == 3


async def test_ratelimit_reset_header_sets_the_delay(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    fake.fail_next("POST /v1/embeddings", 429, reset_requests="300ms")

    @job(id=unique_id("oai-reset"), integrations={"openai": integration})
    async def limited(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.embeddings.create("embed", model="text-embedding-3-small", input="x")

    run = await oai.run(limited)
    assert run["status"] == "COMPLETED", run["error"]
    first, second = [r.at for r in fake.requests if r.route == "POST /v1/embeddings"]
    assert second - first >= 0.28  # not the policy's 50 ms: what the header asked for


async def test_retries_are_bounded(oai: Any, fake: FakeOpenAI, integration: OpenAI) -> None:
    fake.fail_next("POST /v1/chat/completions", 503, times=10, message="overloaded")

    @job(id=unique_id("oai-503"), integrations={"openai": integration})
    async def down(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.chat.completions.create("chat", **CHAT)

    run = await oai.run(down)
    assert run["status"] == "FAILED"
    assert "503" in run["error"]["message"] and "overloaded" in run["error"]["message"]
    assert fake.count("POST /v1/chat/completions") == integration.retry.max_attempts


async def test_connection_errors_are_retried_then_fail(oai: Any, fake: FakeOpenAI) -> None:
    port = fake.port
    fake.stop()
    offline = OpenAI(
        id="offline",
        api_key="sk-offline-0000000000",
        base_url=f"http://127.0.0.1:{port}/v1",
        retry=RetryPolicy(max_attempts=2, min_delay=0.01, max_delay=0.05),
    )

    @job(id=unique_id("oai-offline"), integrations={"openai": offline})
    async def unreachable(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.models.list("models")

    run = await oai.run(unreachable)
    assert run["status"] == "FAILED"
    assert "could not connect" in run["error"]["message"]
    assert (await oai.task(run["id"], "models"))["attempts"] == 2


async def test_a_missing_key_is_one_clear_error(
    oai: Any, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    keyless = OpenAI(id="keyless", base_url=fake.base_url)  # constructing needs no key

    @job(id=unique_id("oai-keyless"), integrations={"openai": keyless})
    async def no_key(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.models.list("models")

    run = await oai.run(no_key)
    assert run["status"] == "FAILED"
    assert "has no API key" in run["error"]["message"]
    assert "OPENAI_API_KEY" in run["error"]["message"]
    assert fake.count() == 0
    assert await oai.tasks(run["id"]) == []  # refused before anything was written


async def test_stream_on_a_method_that_cannot_stream_is_rejected_before_anything_is_recorded(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    # chat.completions.create and responses.create stream (tests/.../test_streaming.py).
    @job(id=unique_id("oai-stream"), integrations={"openai": integration})
    async def streamed(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.beta.threads.create_and_run(
            "thread-run", assistant_id="asst_1", stream=True
        )

    run = await oai.run(streamed)
    assert run["status"] == "FAILED"
    assert "only chat.completions.create and responses.create stream" in run["error"]["message"]
    assert await oai.tasks(run["id"]) == []
    assert fake.count() == 0


def _thread_and_run(fake: FakeOpenAI) -> tuple[str, str]:
    with openai.OpenAI(api_key="sk-setup", base_url=fake.base_url, max_retries=0) as client:
        with pytest.warns(DeprecationWarning):
            asst = client.beta.assistants.create(model="gpt-4o")
        with pytest.warns(DeprecationWarning):
            run = client.beta.threads.create_and_run(assistant_id=asst.id)
    return run.thread_id, run.id


async def test_a_poll_keeps_going_through_server_errors(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    thread_id, run_id = _thread_and_run(fake)
    fake.fail_next("GET /v1/threads/{thread_id}/runs/{run_id}", 500, times=2)

    @job(id=unique_id("oai-poll-500"), integrations={"openai": integration})
    async def waits(payload: Any, io: Any, ctx: Any) -> Any:
        run = await io.openai.beta.threads.runs.wait_for_completion("wait", thread_id, run_id)
        return run.status

    run = await oai.run(waits)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == "completed"
    assert fake.count("GET /v1/threads/{thread_id}/runs/{run_id}") >= 3


async def test_a_poll_ends_on_not_found(oai: Any, fake: FakeOpenAI, integration: OpenAI) -> None:
    thread_id, _ = _thread_and_run(fake)

    @job(id=unique_id("oai-poll-404"), integrations={"openai": integration})
    async def waits(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.beta.threads.runs.wait_for_completion("wait", thread_id, "run_missing")

    run = await oai.run(waits)
    assert run["status"] == "FAILED"
    assert "404" in run["error"]["message"] and "run_missing" in run["error"]["message"]
    assert fake.count("GET /v1/threads/{thread_id}/runs/{run_id}") == 1
    row = await oai.task(run["id"], "wait")
    assert (row["status"], row["error"]["status_code"]) == ("ERRORED", 404)


async def test_a_poll_times_out(oai: Any, fake: FakeOpenAI, integration: OpenAI) -> None:
    thread_id, run_id = _thread_and_run(fake)
    fake.set_run_status(thread_id, run_id, "in_progress")  # never finishes

    @job(id=unique_id("oai-poll-timeout"), integrations={"openai": integration})
    async def waits(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.beta.threads.runs.wait_for_completion(
            "wait", thread_id, run_id, poll_timeout=0.3
        )

    run = await oai.run(waits)
    assert run["status"] == "FAILED"
    assert run["error"]["type"] == "PollTimeoutError"
