"""`io.openai` end to end: real `openai.AsyncOpenAI` client, fake server, real scheduler and a
SQLite file. Each test's job has its own id (job ids are global to the process)."""

from __future__ import annotations

from typing import Any

from openai.pagination import AsyncCursorPage
from openai.types.beta import Assistant
from support import unique_id

from engine import job
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "lookup_weather", "parameters": {"type": "object", "properties": {}}},
}


async def test_a_call_is_one_task_and_replays_without_a_second_request(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    seen: list[Any] = []

    @job(id=unique_id("oai-replay"), integrations={"openai": integration})
    async def replayed(payload: Any, io: Any, ctx: Any) -> Any:
        asst = await io.openai.beta.assistants.create(
            "create-assistant", model="gpt-4o", name="Data visualizer"
        )
        page = await io.openai.beta.assistants.list("list")
        seen.append((asst, page))
        await io.wait("pause", 0.05)
        return asst.id

    run = await oai.run(replayed)
    assert run["status"] == "COMPLETED", run["error"]
    assert fake.count("POST /v1/assistants") == 1
    assert fake.count("GET /v1/assistants") == 1
    assert len(seen) == 2  # first execution, then the replay after the wait
    (first, first_page), (again, again_page) = seen
    assert type(first) is type(again) is Assistant
    assert first == again and first.name == "Data visualizer"
    assert type(first_page) is type(again_page)
    assert isinstance(again_page, AsyncCursorPage)
    assert again_page == first_page and again_page.data[0].id == first.id
    assert again_page.has_more is False and again_page.first_id == first.id  # type: ignore[attr-defined]
    assert run["output"] == first.id

    row = await oai.task(run["id"], "create-assistant")
    assert (row["kind"], row["name"], row["status"], row["attempts"]) == (
        "openai",
        "beta.assistants.create",
        "COMPLETED",
        1,
    )
    assert row["params"] == {"model": "gpt-4o", "name": "Data visualizer"}
    assert row["output"]["id"] == first.id
    assert row["output_type"] == "openai.types.beta.assistant:Assistant"


async def test_posts_carry_the_task_idempotency_key(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-idem"), integrations={"openai": integration})
    async def idem(payload: Any, io: Any, ctx: Any) -> Any:
        thread = await io.openai.beta.threads.create("create-thread")
        await io.openai.beta.threads.retrieve("get-thread", thread.id)
        return thread.id

    run = await oai.run(idem)
    assert run["status"] == "COMPLETED", run["error"]
    posts = [r for r in fake.requests if r.method == "POST"]
    assert [r.idempotency_key for r in posts] == [f"{run['id']}:create-thread"]
    gets = [r for r in fake.requests if r.method == "GET"]
    assert [r.idempotency_key for r in gets] == [None]


async def test_requires_action_then_submit_tool_outputs_then_completed(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-tools"), integrations={"openai": integration})
    async def tools(payload: Any, io: Any, ctx: Any) -> Any:
        asst = await io.openai.beta.assistants.create(
            "create-assistant", model="gpt-4o", tools=[WEATHER_TOOL]
        )
        thread = await io.openai.beta.threads.create(
            "create-thread", messages=[{"role": "user", "content": "weather in Paris?"}]
        )
        run = await io.openai.beta.threads.runs.create_and_wait_for_completion(
            "run", thread.id, assistant_id=asst.id
        )
        assert run.status == "requires_action"
        calls = run.required_action.submit_tool_outputs.tool_calls
        await io.openai.beta.threads.runs.submit_tool_outputs(
            "submit",
            thread.id,
            run.id,
            tool_outputs=[{"tool_call_id": c.id, "output": "sunny"} for c in calls],
        )
        done = await io.openai.beta.threads.runs.wait_for_completion("wait", thread.id, run.id)
        messages = await io.openai.beta.threads.messages.list_all("messages", thread.id)
        return {
            "status": done.status,
            "type": type(done).__name__,
            "messages": [type(m).__name__ for m in messages],
        }

    run = await oai.run(tools)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == {"status": "completed", "type": "Run", "messages": ["Message"] * 2}
    assert fake.count("POST /v1/threads/{thread_id}/runs") == 1
    assert fake.count("POST /v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs") == 1
    names = [(t["key"], t["name"], t["status"]) for t in await oai.tasks(run["id"])]
    assert names == [
        ("create-assistant", "beta.assistants.create", "COMPLETED"),
        ("create-thread", "beta.threads.create", "COMPLETED"),
        ("run:create", "beta.threads.runs.create", "COMPLETED"),
        ("run", "beta.threads.runs.create_and_wait_for_completion", "COMPLETED"),
        ("submit", "beta.threads.runs.submit_tool_outputs", "COMPLETED"),
        ("wait", "beta.threads.runs.wait_for_completion", "COMPLETED"),
        ("messages", "beta.threads.messages.list_all", "COMPLETED"),
    ]


async def test_rate_limit_is_retried_after_retry_after(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    fake.fail_next("POST /v1/assistants", 429, times=1, retry_after=0.2, message="Slow down")

    @job(id=unique_id("oai-429"), integrations={"openai": integration})
    async def limited(payload: Any, io: Any, ctx: Any) -> Any:
        asst = await io.openai.beta.assistants.create("create", model="gpt-4o")
        return asst.id

    run = await oai.run(limited)
    assert run["status"] == "COMPLETED", run["error"]
    assert fake.count("POST /v1/assistants") == 2
    row = await oai.task(run["id"], "create")
    assert (row["status"], row["attempts"]) == ("COMPLETED", 2)
    keys = [r.idempotency_key for r in fake.requests if r.method == "POST"]
    assert keys == [f"{run['id']}:create"] * 2  # one key across attempts
    started, ended = row["started_at"], row["completed_at"]
    assert started is not None and ended is not None


async def test_bad_request_fails_the_run_at_once_with_openais_message(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    fake.fail_next("POST /v1/assistants", 400, message="Invalid model 'gpt-0'", code="bad_model")

    @job(id=unique_id("oai-400"), integrations={"openai": integration})
    async def bad(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.beta.assistants.create("create", model="gpt-0")

    run = await oai.run(bad)
    assert run["status"] == "FAILED"
    assert "Invalid model 'gpt-0'" in run["error"]["message"]
    assert "400" in run["error"]["message"]
    assert fake.count("POST /v1/assistants") == 1
    row = await oai.task(run["id"], "create")
    assert (row["status"], row["attempts"]) == ("ERRORED", 1)
    assert row["error"]["status_code"] == 400
    assert row["error"]["code"] == "bad_model"
    assert row["error"]["error_type"] == "invalid_request_error"
    assert row["error"]["request_id"].startswith("req_")


async def test_the_api_key_is_never_recorded(
    oai: Any, fake: FakeOpenAI, integration: OpenAI, api_key: str
) -> None:
    @job(id=unique_id("oai-secret"), integrations={"openai": integration})
    async def leaky(payload: Any, io: Any, ctx: Any) -> Any:
        asst = await io.openai.beta.assistants.create(
            "create", model="gpt-4o", metadata={"note": f"key is {api_key}"}
        )
        return asst.metadata

    run = await oai.run(leaky)
    assert run["status"] == "COMPLETED", run["error"]
    sent = [r.json for r in fake.requests if r.method == "POST"]
    assert api_key in str(sent)  # the call itself got what the user passed
    dump = oai.dump()
    assert "[REDACTED]" in dump
    assert api_key not in dump
    assert api_key[-12:] not in dump


async def test_create_is_sent_once_across_suspensions(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-once"), integrations={"openai": integration})
    async def once(payload: Any, io: Any, ctx: Any) -> Any:
        asst = await io.openai.beta.assistants.create("asst", model="gpt-4o")
        run = await io.openai.beta.threads.create_and_run_until_completion(
            "thread-run",
            assistant_id=asst.id,
            thread={"messages": [{"role": "user", "content": "hi", "file_ids": ["file_1"]}]},
        )
        return {"status": run.status, "thread": run.thread_id}

    run = await oai.run(once)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"]["status"] == "completed"
    assert fake.count("POST /v1/threads/runs") == 1
    assert fake.count("GET /v1/threads/{thread_id}/runs/{run_id}") >= 1
    by_key = fake.count_by_idempotency_key()
    assert by_key[f"{run['id']}:thread-run:create"] == 1
    sent = next(r.json for r in fake.requests if r.route == "POST /v1/threads/runs")
    message = sent["thread"]["messages"][0]
    assert "file_ids" not in message
    assert message["attachments"] == [
        {"file_id": "file_1", "tools": [{"type": "code_interpreter"}]}
    ]
    wait = await oai.task(run["id"], "thread-run")
    assert (wait["kind"], wait["name"]) == (
        "openai",
        "beta.threads.create_and_run_until_completion",
    )
    assert wait["params"] == {"thread_id": run["output"]["thread"], "run_id": wait["output"]["id"]}
    create = await oai.task(run["id"], "thread-run:create")
    assert create["params"]["thread"]["messages"][0]["file_ids"] == ["file_1"]  # as given


async def test_waits_return_non_completed_runs_without_raising(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-failed-run"), integrations={"openai": integration})
    async def failing(payload: Any, io: Any, ctx: Any) -> Any:
        asst = await io.openai.beta.assistants.create("asst", model="gpt-4o")
        thread = await io.openai.beta.threads.create("thread")
        run = await io.openai.beta.threads.runs.create_and_wait_for_completion(
            "run", thread.id, assistant_id=asst.id
        )
        return {"status": run.status, "error": run.last_error.message if run.last_error else None}

    fake.next_run_status = "failed"
    run = await oai.run(failing)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"]["status"] == "failed"
    assert run["output"]["error"]
