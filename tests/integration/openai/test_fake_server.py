"""The fake OpenAI server, driven through the real ``openai`` client over loopback."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from openai.types import CreateEmbeddingResponse, FileObject, ImagesResponse, Model
from openai.types.beta import Assistant, AssistantDeleted, FunctionToolParam, Thread, ThreadDeleted
from openai.types.beta.threads import Message, Run, TextContentBlock
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from integrations.openai.testing import FakeOpenAI, FakeOpenAIProcess, fake_openai_server

pytest_plugins = ["integrations.openai.testing.pytest_plugin"]

# openai-python warns that the Assistants API is deprecated; the integration is built on it.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FUNCTION_TOOL: FunctionToolParam = {
    "type": "function",
    "function": {"name": "lookup_weather", "parameters": {"type": "object"}},
}


def text_of(message: Message) -> str:
    """The text of a message whose first content block is text (all the fake writes)."""
    block = message.content[0]
    assert isinstance(block, TextContentBlock), block
    return block.text.value


def body_of(error: openai.APIStatusError) -> dict[str, Any]:
    assert isinstance(error.body, dict), error.body
    return error.body


@pytest.fixture
def client(fake_openai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk-secret", max_retries=0) as c:
        yield c


def raw_json(client: openai.OpenAI, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON body of a request, so tests can validate it against the pydantic types."""
    return getattr(client, method)(path, cast_to=object, **kwargs)


def wait_for(fetch: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def test_file_upload_is_processed_after_file_seconds(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    uploaded = client.files.create(file=("notes.txt", io.BytesIO(b"hello")), purpose="assistants")
    assert (uploaded.status, uploaded.filename, uploaded.bytes) == ("uploaded", "notes.txt", 5)
    body = wait_for(
        lambda: raw_json(client, "get", f"/files/{uploaded.id}"),
        lambda body: body["status"] != "uploaded",
        timeout=30,
    )
    assert FileObject.model_validate(body).status == "processed"
    assert [f.id for f in client.files.list()] == [uploaded.id]
    assert client.files.delete(uploaded.id).deleted is True
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_file_can_end_in_error(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    failing = client.files.create(file=("will_fail.jsonl", b"{}"), purpose="batch")
    fake_openai.next_file_status = "error"
    hooked = client.files.create(file=("fine.txt", b"x"), purpose="assistants")
    for file_id in (failing.id, hooked.id):
        retrieve = lambda file_id=file_id: client.files.retrieve(file_id)  # noqa: E731
        assert wait_for(retrieve, lambda f: f.status != "uploaded", timeout=30).status == "error"
    assert client.files.retrieve(hooked.id).status_details


def test_assistant_crud_and_cursor_pagination(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    created = [
        client.beta.assistants.create(
            model="gpt-4o",
            name=f"a{i}",
            tools=[FUNCTION_TOOL],
            metadata={"i": str(i)},
            tool_resources={"code_interpreter": {"file_ids": ["file_1"]}},
        )
        for i in range(5)
    ]
    Assistant.model_validate(raw_json(client, "get", f"/assistants/{created[0].id}"))
    assert created[0].tools[0].type == "function"
    resources = created[0].tool_resources
    assert resources and resources.code_interpreter
    assert resources.code_interpreter.file_ids == ["file_1"]

    page = client.beta.assistants.list(limit=2, order="asc")
    assert [a.name for a in page.data] == ["a0", "a1"] and page.has_more
    page2 = client.beta.assistants.list(limit=2, order="asc", after=page.data[-1].id)
    assert [a.name for a in page2.data] == ["a2", "a3"]
    page3 = client.beta.assistants.list(limit=2, order="asc", after=page2.data[-1].id)
    assert [a.name for a in page3.data] == ["a4"] and not page3.has_more
    assert [a.name for a in client.beta.assistants.list(limit=2)] == [
        "a4",
        "a3",
        "a2",
        "a1",
        "a0",
    ]  # default desc, auto-paginated by the client

    updated = client.beta.assistants.update(created[0].id, instructions="be brief")
    assert updated.instructions == "be brief"
    assert client.beta.assistants.retrieve(created[0].id).instructions == "be brief"
    deleted = raw_json(client, "delete", f"/assistants/{created[0].id}")
    assert AssistantDeleted.model_validate(deleted).deleted is True
    with pytest.raises(openai.NotFoundError) as err:
        client.beta.assistants.retrieve(created[0].id)
    assert body_of(err.value)["type"] == "invalid_request_error"
    assert fake_openai.count("POST /v1/assistants") == 5
    assert fake_openai.count("GET /v1/assistants", method="GET") == 6  # 3 + 3 auto-paged


def test_thread_with_messages(client: openai.OpenAI) -> None:
    thread = client.beta.threads.create(
        messages=[
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
        metadata={"k": "v"},
    )
    Thread.model_validate(raw_json(client, "get", f"/threads/{thread.id}"))
    msg = client.beta.threads.messages.create(
        thread.id,
        role="user",
        content="third",
        attachments=[{"file_id": "file_1", "tools": [{"type": "file_search"}]}],
    )
    Message.model_validate(raw_json(client, "get", f"/threads/{thread.id}/messages/{msg.id}"))
    assert msg.attachments and msg.attachments[0].file_id == "file_1"
    texts = [text_of(m) for m in client.beta.threads.messages.list(thread.id, order="asc")]
    assert texts == ["first", "second", "third"]
    updated = client.beta.threads.messages.update(
        msg.id, thread_id=thread.id, metadata={"seen": "yes"}
    )
    assert updated.metadata == {"seen": "yes"}
    assert client.beta.threads.update(thread.id, metadata={"k": "w"}).metadata == {"k": "w"}
    deleted = raw_json(client, "delete", f"/threads/{thread.id}")
    assert ThreadDeleted.model_validate(deleted).deleted is True


def test_run_lifecycle_appends_one_assistant_message() -> None:
    with (
        fake_openai_server(run_seconds=0.5) as fake,
        openai.OpenAI(base_url=fake.base_url, api_key="sk", max_retries=0) as client,
    ):
        _check_run_lifecycle(client)


def _check_run_lifecycle(client: openai.OpenAI) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o", instructions="help")
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "ping"}])
    run = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id)
    assert run.status == "queued" and run.instructions == "help"
    Run.model_validate(raw_json(client, "get", f"/threads/{thread.id}/runs/{run.id}"))
    started = wait_for(
        lambda: client.beta.threads.runs.retrieve(run.id, thread_id=thread.id),
        lambda r: r.status != "queued",
    )
    assert started.status == "in_progress" and started.started_at is not None
    done = wait_for(
        lambda: client.beta.threads.runs.retrieve(run.id, thread_id=thread.id),
        lambda r: r.status == "completed",
    )
    assert done.status == "completed" and done.completed_at is not None
    for _ in range(3):  # polling again must not append more messages
        client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
    messages = client.beta.threads.messages.list(thread.id, order="asc").data
    replies = [m for m in messages if m.role == "assistant"]
    assert len(replies) == 1
    assert (replies[0].run_id, replies[0].assistant_id) == (run.id, assistant.id)
    assert text_of(replies[0]) == "echo: ping"
    assert [r.id for r in client.beta.threads.runs.list(thread.id)] == [run.id]


@pytest.mark.parametrize("kind", ["runs", "files", "responses"])
def test_a_held_object_stays_in_progress_until_released(
    fake_openai: FakeOpenAI, client: openai.OpenAI, kind: str
) -> None:
    fake_openai.hold(kind)
    if kind == "runs":
        assistant = client.beta.assistants.create(model="gpt-4o")
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "ping"}])
        created = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id)

        def read() -> str:
            return client.beta.threads.runs.retrieve(created.id, thread_id=thread.id).status

        pending, done = "in_progress", "completed"
    elif kind == "files":
        file = client.files.create(file=("held.txt", b"x"), purpose="assistants")

        def read() -> str:
            return client.files.retrieve(file.id).status

        pending, done = "uploaded", "processed"
    else:
        resp = client.responses.create(model="gpt-4o", background=True, input="later")

        def read() -> str:
            return str(client.responses.retrieve(resp.id).status)  # None would fail the test

        pending, done = "in_progress", "completed"
    # Well past its time (0.2 s at most): still in progress, for as long as the hold lasts.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert read() == pending
    fake_openai.release(kind)
    assert read() == done  # the first read after the release finishes it


def test_hold_refuses_an_unknown_kind(fake_openai: FakeOpenAI) -> None:
    root = fake_openai.base_url[: -len("/v1")]
    request = urllib.request.Request(
        root + "/_fake/hold",
        data=b'{"kind": "threads"}',
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400
    assert "threads" in json.loads(refused.value.read())["error"]["message"]
    refused.value.close()


def test_requires_action_then_submit_tool_outputs(
    fake_openai: FakeOpenAI, client: openai.OpenAI
) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    run = client.beta.threads.create_and_run(
        assistant_id=assistant.id, thread={"messages": [{"role": "user", "content": "rain?"}]}
    )
    Run.model_validate(raw_json(client, "get", f"/threads/{run.thread_id}/runs/{run.id}"))
    waiting = wait_for(
        lambda: client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id),
        lambda r: r.status == "requires_action",
    )
    calls = waiting.required_action.submit_tool_outputs.tool_calls
    assert [c.function.name for c in calls] == ["lookup_weather"]
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=run.thread_id, tool_outputs=[]
        )
    resumed = client.beta.threads.runs.submit_tool_outputs(
        run.id,
        thread_id=run.thread_id,
        tool_outputs=[{"tool_call_id": calls[0].id, "output": "sunny"}],
    )
    assert resumed.status == "in_progress" and resumed.required_action is None
    done = wait_for(
        lambda: client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id),
        lambda r: r.status == "completed",
    )
    assert done.status == "completed"
    assert fake_openai.count("POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs") == 2


def test_cancel_failed_and_forced_runs(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    assistant = client.beta.assistants.create(model="gpt-4o")
    thread = client.beta.threads.create()
    fake_openai.hold("runs")  # so that the cancel cannot race the run's completion
    run = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id)
    assert client.beta.threads.runs.cancel(run.id, thread_id=thread.id).status == "cancelling"
    fake_openai.release("runs")
    cancelled = wait_for(
        lambda: client.beta.threads.runs.retrieve(run.id, thread_id=thread.id),
        lambda r: r.status == "cancelled",
    )
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.cancel(run.id, thread_id=thread.id)

    fake_openai.next_run_status = "failed"
    failing = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id)
    failed = wait_for(
        lambda: client.beta.threads.runs.retrieve(failing.id, thread_id=thread.id),
        lambda r: r.status == "failed",
    )
    assert failed.status == "failed" and failed.last_error.code == "server_error"

    forced = client.beta.threads.runs.create(thread.id, assistant_id=assistant.id)
    fake_openai.complete_run(thread.id, forced.id)
    assert client.beta.threads.runs.retrieve(forced.id, thread_id=thread.id).status == "completed"
    fake_openai.set_run_status(thread.id, forced.id, "expired")  # terminal: stays completed
    assert client.beta.threads.runs.retrieve(forced.id, thread_id=thread.id).status == "completed"


def test_chat_embeddings_images_models(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    body = raw_json(
        client,
        "post",
        "/chat/completions",
        body={
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "hello there"},
            ],
        },
    )
    chat = ChatCompletion.model_validate(body)
    assert chat.choices[0].message.content == "echo: hello there"
    assert chat.usage is not None and chat.usage.total_tokens > 0

    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b", "a"])
    vectors = [d.embedding for d in emb.data]
    assert len(vectors[0]) == 8 and vectors[0] == vectors[2] != vectors[1]
    again = client.embeddings.create(
        model="text-embedding-3-small", input="a", encoding_format="float"
    )
    assert again.data[0].embedding == vectors[0]
    CreateEmbeddingResponse.model_validate(
        raw_json(client, "post", "/embeddings", body={"model": "m", "input": "a"})
    )

    image = client.images.generate(prompt="a cat", n=2)
    ImagesResponse.model_validate(image.model_dump())
    assert image.data and image.data[0].url == f"{fake_openai.base_url[:-3]}/_fake/images/1.png"
    with urllib.request.urlopen(image.data[0].url, timeout=5) as png:
        assert png.read().startswith(b"\x89PNG")

    models = client.models.list()
    assert "gpt-4o" in [m.id for m in models]
    Model.model_validate(raw_json(client, "get", "/models/gpt-4o"))


def test_responses_sync_and_background(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    body = raw_json(client, "post", "/responses", body={"model": "gpt-4o", "input": "hi"})
    sync = Response.model_validate(body)
    assert sync.status == "completed" and sync.output_text == "echo: hi"

    bg = client.responses.create(
        model="gpt-4o",
        background=True,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "later"}]}],
    )
    assert bg.status == "queued" and bg.output_text == ""
    done = wait_for(lambda: client.responses.retrieve(bg.id), lambda r: r.status == "completed")
    assert done.output_text == "echo: later" and done.usage is not None

    fake_openai.hold("responses")  # so that the cancel cannot race the response's completion
    other = client.responses.create(model="gpt-4o", background=True, input="stop")
    assert client.responses.cancel(other.id).status == "cancelled"
    fake_openai.release("responses")
    assert client.responses.retrieve(other.id).status == "cancelled"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_missing")


def test_fault_injection(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    fake_openai.fail_next("POST /v1/assistants", status=429, retry_after=0.05, message="slow down")
    with pytest.raises(openai.RateLimitError) as rate:
        client.beta.assistants.create(model="gpt-4o")
    assert rate.value.response.headers["retry-after"] == "0.05"
    assert rate.value.response.headers["x-ratelimit-reset-requests"] == "0.05s"
    assert body_of(rate.value)["code"] == "rate_limit_exceeded"
    assert client.beta.assistants.create(model="gpt-4o").model == "gpt-4o"  # only once

    fake_openai.fail_next("GET /v1/models", status=500, times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.models.list()
    client.models.list()

    fake_openai.fail_next("POST /v1/chat/completions", status=400, message="bad prompt")
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "bad prompt" in str(bad.value) and body_of(bad.value)["message"] == "bad prompt"
    assert set(body_of(bad.value)) == {"message", "type", "param", "code"}
    assert fake_openai.count("POST /v1/assistants") == 2  # faulted requests are recorded too
    assert fake_openai.count("GET /v1/models") == 3


def test_client_retries_through_a_429(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next("GET /v1/models", status=429, retry_after=0.01)
    with openai.OpenAI(base_url=fake_openai.base_url, api_key="sk", max_retries=2) as c:
        assert c.models.list().data
    assert fake_openai.count("GET /v1/models") == 2


def test_idempotency_keys_and_request_log(fake_openai: FakeOpenAI, client: openai.OpenAI) -> None:
    for _ in range(2):
        client.beta.threads.create(extra_headers={"Idempotency-Key": "k1"})
    client.beta.threads.create(extra_headers={"Idempotency-Key": "k2"})
    assert fake_openai.count_by_idempotency_key()["k1"] == 2
    assert fake_openai.count_by_idempotency_key()["k2"] == 1
    rec = fake_openai.requests[0]
    assert (rec.method, rec.path, rec.route, rec.idempotency_key) == (
        "POST",
        "/v1/threads",
        "POST /v1/threads",
        "k1",
    )
    assert rec.json == {}
    assert "sk-secret" not in json.dumps(rec.headers)
    assert {k.lower(): v for k, v in rec.headers.items()}["authorization"] == "REDACTED"
    fake_openai.reset()
    assert fake_openai.requests == [] and fake_openai.count() == 0


def test_malformed_json_and_unknown_routes(fake_openai: FakeOpenAI) -> None:
    def status_and_error(req: urllib.request.Request | str) -> tuple[int, dict[str, Any]]:
        try:
            urllib.request.urlopen(req, timeout=5).close()
        except urllib.error.HTTPError as err:
            with err:
                return err.code, json.loads(err.read())["error"]
        raise AssertionError("expected an HTTP error")

    bad = urllib.request.Request(
        f"{fake_openai.base_url}/assistants",
        data=b"{nope",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    status, error = status_and_error(bad)
    assert status == 400 and error["type"] == "invalid_request_error" and error["message"]
    assert status_and_error(f"{fake_openai.base_url}/nowhere")[0] == 404
    assert fake_openai.count("POST /v1/assistants") == 1  # malformed requests are recorded


async def test_async_client_run_to_completion() -> None:
    with fake_openai_server(run_seconds=0.1) as fake:
        async with openai.AsyncOpenAI(
            base_url=fake.base_url, api_key="sk", max_retries=0
        ) as client:
            assistant = await client.beta.assistants.create(model="gpt-4o")
            run = await client.beta.threads.create_and_run(
                assistant_id=assistant.id,
                thread={"messages": [{"role": "user", "content": "async"}]},
            )
            while run.status not in ("completed", "failed"):
                await asyncio.sleep(0.02)
                run = await client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
            messages = await client.beta.threads.messages.list(run.thread_id)
            assert run.status == "completed"
            assert text_of(messages.data[0]) == "echo: async"
        assert fake.count("POST /v1/threads/runs") == 1


def test_module_entry_point_serves_admin_endpoints() -> None:
    # FakeOpenAIProcess is `python -m integrations.openai.testing` steered over /_fake/ routes
    with FakeOpenAIProcess(run_seconds=0.1) as fake:
        assert fake.base_url.startswith("http://127.0.0.1:"), fake.base_url
        assert fake.base_url.endswith("/v1") and not fake.base_url.endswith(":0/v1")
        fake.fail_next("GET /v1/models", status=503)
        with openai.OpenAI(base_url=fake.base_url, api_key="sk", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError):
                client.models.list()
            client.models.list(extra_headers={"Idempotency-Key": "sub-1"})
        stats = fake.stats()
        assert stats["by_route"] == {"GET /v1/models": 2}
        assert stats["by_idempotency_key"] == {"sub-1": 1}
        assert stats["requests"][0]["route"] == "GET /v1/models"
        fake.reset()
        assert fake.stats()["requests"] == []
        fake.proc.terminate()
        assert fake.proc.wait(timeout=10) == 0
