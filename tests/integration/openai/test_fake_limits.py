"""The fake OpenAI server's account: rate limits, quota, usage and the concurrency high-water mark,
seen through the real ``openai`` client (and its process twin over the admin routes)."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator

import openai
import pytest

from integrations.openai.testing import FakeOpenAI, FakeOpenAIProcess
from integrations.openai.testing.limits import format_duration

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}


@pytest.fixture
def limited() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(requests_per_minute=3, tokens_per_minute=1000) as fake:
        yield fake


@pytest.fixture
def client(limited: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=limited.base_url, api_key="sk-x", max_retries=0) as c:
        yield c


def test_every_answer_carries_rate_limit_headers(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
    assert raw.headers["x-ratelimit-limit-requests"] == "3"
    assert raw.headers["x-ratelimit-remaining-requests"] == "2"
    assert raw.headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(raw.headers["x-ratelimit-remaining-tokens"]) < 1000
    assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    missing = client.models.with_raw_response.retrieve  # an error answer carries them too
    with pytest.raises(openai.NotFoundError) as caught:
        missing("no-such-model")
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "3"


def test_requests_per_minute_answers_429_with_retry_after(
    limited: FakeOpenAI, client: openai.OpenAI
) -> None:
    for _ in range(3):
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    headers = caught.value.response.headers
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.code == "rate_limit_exceeded"
    assert "requests" in caught.value.message
    assert limited.rate_limited() == 1


def test_tokens_per_minute_counts_prompt_and_allowed_completion(
    limited: FakeOpenAI, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**CHAT, max_tokens=2000)  # type: ignore[call-overload]
    assert "tokens" in caught.value.message
    assert caught.value.response.headers["x-ratelimit-remaining-tokens"] == "1000"


def test_usage_reports_cached_and_reasoning_tokens(
    limited: FakeOpenAI, client: openai.OpenAI
) -> None:
    plain = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert plain.usage is not None
    assert plain.usage.prompt_tokens == 3
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    limited.set_usage(
        prompt_tokens=1200, completion_tokens=300, cached_tokens=1000, reasoning_tokens=200
    )
    chat = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert chat.usage is not None
    assert (chat.usage.prompt_tokens, chat.usage.completion_tokens, chat.usage.total_tokens) == (
        1200,
        300,
        1500,
    )
    assert chat.usage.prompt_tokens_details is not None
    assert chat.usage.prompt_tokens_details.cached_tokens == 1000
    assert chat.usage.completion_tokens_details is not None
    assert chat.usage.completion_tokens_details.reasoning_tokens == 200
    response = client.responses.create(model="gpt-4o", input="hi")
    assert response.usage is not None
    assert response.usage.input_tokens_details.cached_tokens == 1000
    assert response.usage.output_tokens_details.reasoning_tokens == 200


def test_insufficient_quota_on_demand(limited: FakeOpenAI, client: openai.OpenAI) -> None:
    limited.exhaust_quota()
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert caught.value.code == "insufficient_quota"
    assert "quota" in caught.value.message
    limited.exhaust_quota(False)
    client.chat.completions.create(**CHAT)  # type: ignore[call-overload]


def test_high_water_mark_of_concurrent_requests() -> None:
    with FakeOpenAI(latency=0.3) as fake:
        barrier = threading.Barrier(4)

        def call() -> None:
            with openai.OpenAI(base_url=fake.base_url, api_key="sk-x", max_retries=0) as c:
                barrier.wait(timeout=30)
                c.models.list()

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert 2 <= fake.max_concurrent() <= 4
        # A handler counts its request out after the answer is sent: the client may see its
        # answer a moment before, so "none in flight" is waited for, not read once.
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"{fake.base_url[:-3]}/_fake/concurrency", timeout=10) as r:
                body = json.loads(r.read())
            if body["in_flight"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert body["max_concurrent"] == fake.max_concurrent()
        assert body["in_flight"] == 0
        fake.reset()
        assert fake.max_concurrent() == 0


def test_process_twin_is_configured_the_same_way() -> None:
    with FakeOpenAIProcess(requests_per_minute=1) as fake:
        with openai.OpenAI(base_url=fake.base_url, api_key="sk-x", max_retries=0) as c:
            c.models.list()
            with pytest.raises(openai.RateLimitError):
                c.models.list()
            assert fake.rate_limited() == 1
            fake.set_limits(requests_per_minute=None)
            fake.set_usage(prompt_tokens=7, completion_tokens=1)
            chat = c.chat.completions.create(**CHAT)  # type: ignore[call-overload]
            assert chat.usage is not None and chat.usage.total_tokens == 8
            fake.exhaust_quota()
            with pytest.raises(openai.RateLimitError) as caught:
                c.models.list()
            assert caught.value.code == "insufficient_quota"
            assert fake.max_concurrent() >= 1


@pytest.mark.parametrize(
    ("seconds", "text"), [(360.0, "6m0s"), (1.5, "1.5s"), (0.02, "20ms"), (0.0, "0s")]
)
def test_reset_durations_are_written_like_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
