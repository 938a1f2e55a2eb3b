"""The run page of a job that calls OpenAI (the bundled fake server, over HTTP): each call's
model, tokens and cost and the run's totals, as `engine runs show` has them, and never the API
key."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from support import Harness, unique_id

from engine import RetryPolicy, job
from engine.ui import create_app
from engine.usage import summary_text
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

API_KEY = "sk-ui-test-DO-NOT-SHOW-0123456789abcdef"


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(response_seconds=0.1) as server:
        yield server


@pytest.fixture
async def openai_integration(fake: FakeOpenAI) -> AsyncIterator[OpenAI]:
    created = OpenAI(
        api_key=API_KEY,
        base_url=fake.base_url,
        poll_interval=0.02,
        max_poll_interval=0.1,
        retry=RetryPolicy(max_attempts=3, min_delay=0.05),
    )
    yield created
    await created.aclose()


async def test_run_page_shows_model_tokens_and_cost_per_call_and_in_total(
    sqlite_harness: Harness, openai_integration: OpenAI, fake: FakeOpenAI
) -> None:
    @job(id=unique_id("summarize"), integrations={"openai": openai_integration})
    async def summarize(payload: Any, io: Any, ctx: Any) -> str:
        chat = await io.openai.chat.completions.create(
            "chat", model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        await io.openai.responses.create("resp", model="gpt-4o", input="hello there")
        return str(chat.choices[0].message.content)

    await sqlite_harness.start(summarize)
    run = await sqlite_harness.run(summarize)
    assert run["status"] == "COMPLETED", run
    # What `engine runs show --json` says of the calls: the page must say the same.
    shown = await sqlite_harness.engine.show_run(run["id"])
    by_key = {t["key"]: t for t in shown["tasks"]}
    app = create_app(sqlite_harness.url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            page = (await http.get(f"/runs/{run['id']}")).text
    assert API_KEY not in page
    chat = re.search(r'data-key="chat">.*?<span class=usage>([^<]*)</span>', page)
    assert chat, page
    chat_usage = by_key["chat"]["usage"]
    assert chat.group(1).startswith("1 call · gpt-4o-mini · ")
    assert chat.group(1).endswith(html.escape(summary_text(chat_usage, shown["usage"]["currency"])))
    assert f"{chat_usage['prompt_tokens']:,} in" in chat.group(1)
    total = re.search(r'<span id="run-usage">([^<]*)</span>', page)
    assert total, page
    run_usage = shown["usage"]
    assert run_usage["calls"] == 2 and run_usage["cost"] is not None  # both models are priced
    assert "$" in total.group(1)
    assert total.group(1) == html.escape(
        f"2 calls · {', '.join(run_usage['models'])} · "
        + summary_text(run_usage, run_usage["currency"])
    )
