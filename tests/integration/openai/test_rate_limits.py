"""429 and quota done right: a rate limit waits (suspended) for the reset OpenAI's headers give,
however long up to OpenAI(max_rate_limit_wait=...), with attempts of its own; errors no retry
can fix fail the task at once with a clear message."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from support import unique_id

from engine import Job, RetryPolicy, clock, job
from engine.exceptions import EngineError
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
ROUTE = "POST /v1/chat/completions"
TEST_RETRY = RetryPolicy(max_attempts=4, min_delay=0.05, max_delay=2.0)


def chat_job(integration: OpenAI) -> Job:
    @job(id=unique_id("oai-429"), integrations={"openai": integration})
    async def chat(payload: Any, io: Any, ctx: Any) -> Any:
        done = await io.openai.chat.completions.create("chat", **CHAT)
        return done.choices[0].message.content

    return chat


def two_attempts(fake: FakeOpenAI, max_rate_limit_retries: int) -> OpenAI:
    """An integration whose policy allows two attempts: rate limits must not count against them."""
    return OpenAI(
        api_key="sk-two-000000000000",
        base_url=fake.base_url,
        retry=RetryPolicy(max_attempts=2, min_delay=0.01, max_delay=0.05),
        max_rate_limit_retries=max_rate_limit_retries,
    )


async def wait_status(oai: Any, run_id: str, status: str) -> dict[str, Any]:
    for _ in range(1000):
        run = await oai.engine.store.get_run(run_id)
        if run["status"] == status:
            return run  # type: ignore[no-any-return]
        await asyncio.sleep(0.02)
    raise AssertionError(f"run {run_id} never reached {status}")


async def test_a_long_reset_is_waited_for_suspended_past_the_policys_max_delay(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    # TEST_RETRY.max_delay is 2 s; OpenAI says the limit resets in 6 minutes.
    fake.fail_next(
        ROUTE, 429, reset_requests="6m0s", message="Rate limit reached for requests per min (RPM)"
    )
    chat = chat_job(integration)
    await oai.harness.start(chat)
    run_id = await oai.engine.trigger(chat.id, {})
    await wait_status(oai, run_id, "WAITING")
    row = await oai.task(run_id, "chat")
    assert row["status"] == "WAITING" and row["attempts"] == 1
    assert row["error"]["status_code"] == 429
    waits = row["due_at"].timestamp() - clock.now()
    assert 300 < waits <= 360
    assert fake.count(ROUTE) == 1
    # A new worker once the reset has passed (the clock moved, not slept) sends it again.
    await oai.harness.stop()
    clock.advance(361)
    await oai.harness.start(chat)
    run = await oai.engine.wait_for(run_id, 20)
    assert run["status"] == "COMPLETED", run["error"]
    assert fake.count(ROUTE) == 2
    assert (await oai.task(run_id, "chat"))["attempts"] == 2


async def test_a_reset_longer_than_the_maximum_waits_the_maximum(
    oai: Any, fake: FakeOpenAI
) -> None:
    capped = OpenAI(
        api_key="sk-capped-0000000000",
        base_url=fake.base_url,
        retry=TEST_RETRY,
        max_rate_limit_wait=120,
    )
    fake.fail_next(ROUTE, 429, retry_after=7200)
    chat = chat_job(capped)
    await oai.harness.start(chat)
    run_id = await oai.engine.trigger(chat.id, {})
    await wait_status(oai, run_id, "WAITING")
    row = await oai.task(run_id, "chat")
    assert 100 < row["due_at"].timestamp() - clock.now() <= 120
    await capped.aclose()


async def test_rate_limits_do_not_use_up_max_attempts(oai: Any, fake: FakeOpenAI) -> None:
    two = two_attempts(fake, max_rate_limit_retries=3)
    fake.fail_next(ROUTE, 429, times=3, reset_requests="10ms")
    run = await oai.run(chat_job(two))
    assert run["status"] == "COMPLETED", run["error"]
    assert (await oai.task(run["id"], "chat"))["attempts"] == 4
    assert fake.count(ROUTE) == 4
    await two.aclose()


async def test_rate_limit_retries_are_bounded(oai: Any, fake: FakeOpenAI) -> None:
    two = two_attempts(fake, max_rate_limit_retries=1)
    fake.fail_next(ROUTE, 429, times=10, reset_requests="10ms")
    run = await oai.run(chat_job(two))
    assert run["status"] == "FAILED"
    assert "429" in run["error"]["message"]
    assert fake.count(ROUTE) == 3
    await two.aclose()


async def test_the_fakes_own_limit_is_waited_out(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    chat = chat_job(integration)
    await oai.harness.start(chat)
    # Six a minute, one back every 10 s: spend them all, so the job's request finds none left.
    fake.set_limits(requests_per_minute=6)
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-x", max_retries=0) as client:
        while True:
            try:
                client.models.list()
            except openai.RateLimitError:
                break
    before = fake.count(ROUTE)
    run_id = await oai.engine.trigger(chat.id, {})
    run = await oai.engine.wait_for(run_id, 60)
    assert run["status"] == "COMPLETED", run["error"]
    row = await oai.task(run_id, "chat")
    assert row["attempts"] == 2  # one 429, then the retry after the reset the fake gave
    assert fake.count(ROUTE) - before == 2
    assert fake.rate_limited() == 2


async def test_insufficient_quota_fails_at_once(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    fake.exhaust_quota()
    run = await oai.run(chat_job(integration))
    assert run["status"] == "FAILED"
    message = run["error"]["message"]
    assert "insufficient_quota" in message and "no retry can fix this" in message
    assert "billing" in message
    row = await oai.task(run["id"], "chat")
    assert (row["status"], row["attempts"], row["error"]["code"]) == (
        "ERRORED",
        1,
        "insufficient_quota",
    )
    assert fake.count(ROUTE) == 1


@pytest.mark.parametrize(
    ("status", "code", "hint"),
    [
        (401, "invalid_api_key", "OPENAI_API_KEY"),
        (403, None, "may not use this model"),
        (404, "model_not_found", "no such object or model"),
        (400, None, "fix the parameters"),
        (429, "billing_hard_limit_reached", "hard limit"),
    ],
)
async def test_errors_no_retry_can_fix_fail_at_once(
    oai: Any, fake: FakeOpenAI, integration: OpenAI, status: int, code: str | None, hint: str
) -> None:
    fake.fail_next(ROUTE, status, code=code, message="refused")
    run = await oai.run(chat_job(integration))
    assert run["status"] == "FAILED"
    assert hint in run["error"]["message"]
    assert fake.count(ROUTE) == 1


def test_rate_limit_options_are_checked() -> None:
    with pytest.raises(EngineError, match="max_rate_limit_wait"):
        OpenAI(api_key="k", max_rate_limit_wait=0)
    with pytest.raises(EngineError, match="max_rate_limit_retries"):
        OpenAI(api_key="k", max_rate_limit_retries=-1)


async def test_a_request_that_stalls_after_its_place_takes_a_new_one_before_it_leaves(
    oai: Any, fake: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker stalls (here: a request hook of the caller's own httpx client, which runs
    before the limiter's) for 1 s between the place and the request: the limiter's hook finds
    the request 1 s past its place and reserves another rather than let it go late."""
    import logging

    from engine import RateLimit

    caplog.set_level(logging.DEBUG, logger="engine.ratelimit")

    async def stall(request: Any) -> None:
        await asyncio.sleep(1.0)  # at least 1 s: more than LATE_SLACK (0.5 s) past its place

    http = openai.DefaultAsyncHttpxClient(event_hooks={"request": [stall]})
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="sk-stall", http_client=http)
    name = unique_id("stalled")
    integration = OpenAI(id=name, client=client, limits=RateLimit(requests=2, per="second"))
    try:
        run = await oai.run(chat_job(integration))
    finally:
        await http.aclose()
    assert run["status"] == "COMPLETED", run["error"]
    assert fake.count(ROUTE) == 1
    rechecked = [r.getMessage() for r in caplog.records if "past its place" in r.getMessage()]
    assert len(rechecked) == 1 and f"openai:{name}" in rechecked[0], rechecked
