"""`stream=True`: chunks forwarded to the run's stream as they arrive, the assembled response
recorded and replayed without a second request; the fake serves OpenAI's SSE."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from support import unique_id, until

from engine import EngineError, job
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

PROMPT = "one two three four five six"


async def test_a_streamed_chat_completion_is_read_while_it_runs_and_replayed_from_the_record(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    seen: list[Any] = []

    @job(id=unique_id("oai-stream"), integrations={"openai": integration})
    async def streamed(payload: Any, io: Any, ctx: Any) -> str:
        answer = await io.openai.chat.completions.create(
            "answer",
            model="gpt-4o",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
        )
        seen.append(answer)
        await io.wait("pause", 0.05)  # unloaded: the next execution replays the call
        return str(answer.choices[0].message.content)

    fake.hold("streams")  # the answer pauses half-way until the test releases it
    await oai.harness.start(streamed)
    run_id = await oai.engine.trigger(streamed.id)
    reader = oai.engine.read_stream(run_id, "answer")
    chunks = [await asyncio.wait_for(anext(reader), 30) for _ in range(4)]
    await until(lambda: fake.paused_streams() == 1, "the answer to pause half-way")
    # The first half was read while the call is still in progress.
    assert [c.data["object"] for c in chunks] == ["chat.completion.chunk"] * 4
    text = "".join(c.data["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "echo: one two"
    assert (await oai.engine.get_run(run_id))["status"] == "RUNNING"
    fake.release("streams")
    rest = [c async for c in reader]
    every = chunks + rest
    assert [c.seq for c in every] == list(range(1, len(every) + 1))
    text = "".join(
        c.data["choices"][0]["delta"].get("content") or "" for c in every if c.data["choices"]
    )
    assert text == f"echo: {PROMPT}"
    assert every[-1].data["usage"]["total_tokens"] > 0  # stream_options.include_usage
    run = await oai.engine.wait_for(run_id, 30)
    assert run["status"] == "COMPLETED" and run["output"] == f"echo: {PROMPT}"
    # One request; the replay returned the recorded response, of the same type.
    assert fake.count("POST /v1/chat/completions") == 1
    first, again = seen
    assert type(first) is type(again) is ChatCompletion
    assert first == again and first.usage is not None
    task = await oai.task(run_id, "answer")
    assert task["status"] == "COMPLETED" and task["attempts"] == 1
    assert task["params"]["stream"] is True and task["params"]["stream_to"] == "answer"
    assert task["output"]["object"] == "chat.completion"
    usage = (await oai.engine.show_run(run_id))["usage"]
    assert usage["total_tokens"] == first.usage.total_tokens
    # The request asked for the usage chunk; `stream_to` was not sent.
    (request,) = [r for r in fake.requests if r.route == "POST /v1/chat/completions"]
    assert request.json["stream_options"] == {"include_usage": True}
    assert "stream_to" not in request.json


async def test_a_streamed_response_goes_to_the_stream_named_and_records_the_response(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-stream-resp"), integrations={"openai": integration})
    async def streamed(payload: Any, io: Any, ctx: Any) -> Any:
        response = await io.openai.responses.create(
            "respond", model="gpt-4o", input="alpha beta gamma", stream=True, stream_to="live"
        )
        assert isinstance(response, Response)
        return {"status": response.status, "text": response.output_text}

    run = await oai.run(streamed)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == {"status": "completed", "text": "echo: alpha beta gamma"}
    events = [c.data async for c in oai.engine.read_stream(run["id"], "live")]
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "echo: alpha beta gamma"
    assert await oai.engine.list_streams(run["id"]) == [
        {
            "stream": "live",
            "chunks": len(events),
            "last_seq": len(events),
            "last_at": (await oai.engine.list_streams(run["id"]))[0]["last_at"],
        }
    ]


async def test_stream_options_that_cannot_work_are_refused_before_anything_is_sent(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-stream-bad"), integrations={"openai": integration})
    async def bad(payload: Any, io: Any, ctx: Any) -> list[str]:
        refused = []
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: io.openai.chat.completions.create(
                "a", model="gpt-4o", messages=[], stream_to="x"
            ),
            lambda: io.openai.beta.threads.runs.create(
                "b", "thread_1", assistant_id="asst_1", stream=True
            ),
            lambda: io.openai.chat.completions.create(
                "c", model="gpt-4o", messages=[], stream=True, stream_to=""
            ),
        ]
        for call in calls:
            try:
                await call()
            except EngineError as exc:
                refused.append(str(exc))
        return refused

    run = await oai.run(bad)
    assert run["status"] == "COMPLETED", run["error"]
    first, second, third = run["output"]
    assert "pass stream=True with it" in first
    assert "only chat.completions.create and responses.create stream" in second
    assert "stream name" in third and "non-empty" in third
    assert fake.requests == []


async def test_a_streamed_call_that_fails_before_its_stream_is_retried(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    """A failed attempt (a 500) is retried; its chunks are the next attempt's (a worker killed
    mid-stream: tests/acceptance/test_streams.py)."""

    @job(id=unique_id("oai-stream-retry"), integrations={"openai": integration})
    async def streamed(payload: Any, io: Any, ctx: Any) -> str:
        answer = await io.openai.chat.completions.create(
            "answer", model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        return str(answer.choices[0].message.content)

    fake.fail_next("POST /v1/chat/completions", status=500)
    run = await oai.run(streamed)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == "echo: hi"
    chunks = [c async for c in oai.engine.read_stream(run["id"], "answer")]
    assert chunks and all(c.attempt == 2 and not c.restart for c in chunks)
    assert fake.count("POST /v1/chat/completions") == 2


async def test_a_stream_cut_off_half_way_is_sent_again_and_its_chunks_start_again(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    """The connection closes mid-stream: a partial answer is never recorded; the call is
    retried and the new attempt's chunks follow the cut-off ones, the first flagged restart."""

    @job(id=unique_id("oai-stream-cut"), integrations={"openai": integration})
    async def streamed(payload: Any, io: Any, ctx: Any) -> str:
        answer = await io.openai.chat.completions.create(
            "answer", model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], stream=True
        )
        return str(answer.choices[0].message.content)

    fake.cut_next_streams()
    run = await oai.run(streamed)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == f"echo: {PROMPT}"
    chunks = [c async for c in oai.engine.read_stream(run["id"], "answer")]
    first = [c for c in chunks if c.attempt == 1]
    again = [c for c in chunks if c.attempt == 2]
    assert len(first) == 5 and chunks[: len(first)] == first  # the role and 4 words
    assert again[0].restart and not any(c.restart for c in chunks if c is not again[0])
    assert fake.count("POST /v1/chat/completions") == 2
    task = await oai.task(run["id"], "answer")
    assert task["attempts"] == 2
