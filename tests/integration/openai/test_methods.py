"""Every method of the contract table through the real client against the fake, in one job that
suspends many times: each request is sent once, and every replay returns equal objects of the
same openai-python types."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openai.pagination import AsyncCursorPage, AsyncPage
from openai.types import CreateEmbeddingResponse, FileObject, ImagesResponse
from openai.types.beta import Assistant, AssistantDeleted, Thread, ThreadDeleted
from openai.types.beta.threads import Message, Run
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from support import unique_id

from engine import job
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

EXPECTED_TYPES: dict[str, Any] = {
    "upload": FileObject,
    "upload-bytes": FileObject,
    "asst": Assistant,
    "asst-update": Assistant,
    "asst-get": Assistant,
    "asst-list": AsyncCursorPage[Assistant],
    "thread": Thread,
    "thread-get": Thread,
    "thread-update": Thread,
    "msg": Message,
    "msg-get": Message,
    "msg-update": Message,
    "msg-list": AsyncCursorPage[Message],
    "msg-all": list,
    "run": Run,
    "cancel": Run,
    "wait-cancel": Run,
    "run2": Run,
    "run-get": Run,
    "run-list": AsyncCursorPage[Run],
    "create-and-run": Run,
    "thread-delete": ThreadDeleted,
    "asst-delete": AssistantDeleted,
    "chat": ChatCompletion,
    "embed": CreateEmbeddingResponse,
    "image": ImagesResponse,
    "models": AsyncPage,
    "resp": Response,
    "resp-get": Response,
    "resp-wait": Response,
}


@pytest.mark.filterwarnings("error")  # openai's Assistants DeprecationWarning stays inside
async def test_every_method(
    oai: Any, fake: FakeOpenAI, integration: OpenAI, tmp_path: Path
) -> None:
    csv = tmp_path / "mydata.csv"
    csv.write_bytes(b"year,sales\n2022,10\n2023,12\n")
    executions: list[dict[str, Any]] = []

    @job(id=unique_id("oai-tour"), integrations={"openai": integration})
    async def tour(payload: Any, io: Any, ctx: Any) -> Any:
        seen: dict[str, Any] = {}
        executions.append(seen)
        o = io.openai
        seen["upload"] = file = await o.files.create_and_wait_for_processing(
            "upload", purpose="assistants", file=payload["path"]
        )
        seen["upload-bytes"] = notes = await o.files.create(
            "upload-bytes", purpose="assistants", file=("notes.txt", b"some notes")
        )
        seen["asst"] = asst = await o.beta.assistants.create(
            "asst",
            name="Data visualizer",
            model="gpt-4o",
            tools=[{"type": "code_interpreter"}],
            file_ids=[file.id],
        )
        seen["asst-update"] = await o.beta.assistants.update(
            "asst-update", asst.id, name="Renamed", file_ids=[notes.id]
        )
        seen["asst-get"] = await o.beta.assistants.retrieve("asst-get", asst.id)
        seen["asst-list"] = await o.beta.assistants.list("asst-list", limit=10, order="desc")
        seen["thread"] = thread = await o.beta.threads.create(
            "thread",
            messages=[{"role": "user", "content": "Plot the trends.", "file_ids": [file.id]}],
        )
        seen["thread-get"] = await o.beta.threads.retrieve("thread-get", thread.id)
        seen["thread-update"] = await o.beta.threads.update(
            "thread-update", thread.id, metadata={"foo": "bar"}
        )
        seen["msg"] = msg = await o.beta.threads.messages.create(
            "msg", thread.id, role="user", content="And a summary.", file_ids=[notes.id]
        )
        seen["msg-get"] = await o.beta.threads.messages.retrieve("msg-get", thread.id, msg.id)
        seen["msg-update"] = await o.beta.threads.messages.update(
            "msg-update", thread.id, msg.id, metadata={"foo": "bar"}
        )
        seen["msg-list"] = await o.beta.threads.messages.list("msg-list", thread.id, limit=1)
        seen["msg-all"] = await o.beta.threads.messages.list_all("msg-all", thread.id, limit=1)
        # Held in progress until canceled, so the cancel never races the run's own completion.
        fake.hold("runs")
        seen["run"] = run = await o.beta.threads.runs.create("run", thread.id, assistant_id=asst.id)
        seen["cancel"] = await o.beta.threads.runs.cancel("cancel", thread.id, run.id)
        fake.release("runs")
        seen["wait-cancel"] = await o.beta.threads.runs.wait_for_completion(
            "wait-cancel", thread.id, run.id
        )
        seen["run2"] = run2 = await o.beta.threads.runs.create_and_wait_for_completion(
            "run2", thread.id, assistant_id=asst.id
        )
        seen["run-get"] = await o.beta.threads.runs.retrieve("run-get", thread.id, run2.id)
        seen["run-list"] = await o.beta.threads.runs.list("run-list", thread.id)
        seen["create-and-run"] = await o.beta.threads.create_and_run(
            "create-and-run",
            assistant_id=asst.id,
            thread={"messages": [{"role": "user", "content": "hello"}]},
        )
        seen["thread-delete"] = await o.beta.threads.delete("thread-delete", thread.id)
        seen["asst-delete"] = await o.beta.assistants.delete("asst-delete", asst.id)
        seen["chat"] = await o.chat.completions.create(
            "chat", model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        seen["embed"] = await o.embeddings.create(
            "embed", model="text-embedding-3-small", input="hello"
        )
        seen["image"] = await o.images.generate("image", prompt="a chart")
        seen["models"] = await o.models.list("models")
        seen["resp"] = resp = await o.responses.create("resp", model="gpt-4o", input="hi")
        seen["resp-get"] = await o.responses.retrieve("resp-get", resp.id)
        seen["resp-wait"] = await o.responses.create_and_wait_for_completion(
            "resp-wait", model="gpt-4o", input="think hard"
        )
        await io.wait("pause", 0.01)
        return {
            "file": file.status,
            "cancelled": seen["wait-cancel"].status,
            "run2": run2.status,
            "resp": seen["resp-wait"].status,
            "messages": len(seen["msg-all"]),
        }

    run = await oai.run(tour, {"path": str(csv)})
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == {
        "file": "processed",
        "cancelled": "cancelled",
        "run2": "completed",
        "resp": "completed",
        "messages": 2,
    }

    # Each request went out once, however many times the job was replayed.
    assert len(executions) > 3
    once = [
        "POST /v1/files",
        "POST /v1/assistants",
        "POST /v1/assistants/{assistant_id}",
        "GET /v1/assistants/{assistant_id}",
        "GET /v1/assistants",
        "POST /v1/threads",
        "GET /v1/threads/{thread_id}",
        "POST /v1/threads/{thread_id}",
        "POST /v1/threads/{thread_id}/messages",
        "GET /v1/threads/{thread_id}/messages/{message_id}",
        "POST /v1/threads/{thread_id}/messages/{message_id}",
        "POST /v1/threads/{thread_id}/runs/{run_id}/cancel",
        "GET /v1/threads/{thread_id}/runs",
        "POST /v1/threads/runs",
        "DELETE /v1/threads/{thread_id}",
        "DELETE /v1/assistants/{assistant_id}",
        "POST /v1/chat/completions",
        "POST /v1/embeddings",
        "POST /v1/images/generations",
        "GET /v1/models",
        "GET /v1/responses/{response_id}",
    ]
    counts = {route: fake.count(route) for route in once}
    assert counts["POST /v1/files"] == 2
    assert counts["POST /v1/assistants"] == 1
    assert fake.count("POST /v1/threads/{thread_id}/runs") == 2
    assert fake.count("POST /v1/responses") == 2
    assert fake.count("GET /v1/threads/{thread_id}/messages") == 3  # list, then 2 pages
    assert all(n >= 1 for n in counts.values()), counts
    assert counts["GET /v1/responses/{response_id}"] >= 2  # retrieve, then the poller
    by_key = fake.count_by_idempotency_key()
    assert all(n == 1 for n in by_key.values()), by_key

    # The same types and values on every execution.
    first: dict[str, Any] = {}
    for seen in executions:
        for name, value in seen.items():
            earlier = first.setdefault(name, value)
            assert type(value) is type(earlier), name
            assert value == earlier, name
    final = executions[-1]
    assert set(final) == set(EXPECTED_TYPES)
    for name, expected in EXPECTED_TYPES.items():
        assert isinstance(final[name], expected), (name, type(final[name]))
    assert all(type(m) is Message for m in final["msg-all"])
    assert final["msg-list"].has_more is True

    # What was sent is the v2 form; what was recorded is what the job passed.
    sent = {r.route: r.json for r in fake.requests if r.method == "POST"}
    assert sent["POST /v1/assistants"]["tool_resources"] == {
        "code_interpreter": {"file_ids": [final["upload"].id]}
    }
    assert "file_ids" not in sent["POST /v1/assistants"]
    assert sent["POST /v1/threads/{thread_id}/messages"]["attachments"] == [
        {"file_id": final["upload-bytes"].id, "tools": [{"type": "code_interpreter"}]}
    ]
    tasks = {t["key"]: t for t in await oai.tasks(run["id"])}
    assert tasks["asst"]["params"]["file_ids"] == [final["upload"].id]
    assert "tool_resources" not in tasks["asst"]["params"]
    upload = tasks["upload:create"]["params"]["file"]
    assert upload["name"] == "mydata.csv" and upload["size"] == csv.stat().st_size
    assert len(upload["sha256"]) == 64
    assert tasks["upload-bytes"]["params"]["file"]["name"] == "notes.txt"
    assert all(t["kind"] == "openai" for k, t in tasks.items() if k != "pause")
    assert all(t["status"] == "COMPLETED" for t in tasks.values())
    assert tasks["upload"]["name"] == "files.create_and_wait_for_processing"
    assert tasks["resp-wait:create"]["params"]["background"] is True
