"""What Trigger.dev v2's OpenAI package did that we now do too: every page of runs.list, the
caller's Idempotency-Key, `deleted` files, no poll for an object already done, and a retry
policy and poll schedule per call."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.pagination import AsyncCursorPage
from openai.types import FileObject
from openai.types.beta.threads import Run
from support import unique_id

from engine import RetryPolicy, job
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def setup_client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-setup", max_retries=0) as client:
        yield client


def poll_state(db: Any, run_id: str, key: str) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        (state,) = conn.execute(
            "SELECT poll_state FROM engine_tasks WHERE run_id = ? AND key = ?", (run_id, key)
        ).fetchone()
    return dict(json.loads(state))


async def test_runs_list_returns_every_page_and_list_all_too(
    oai: Any, fake: FakeOpenAI, integration: OpenAI, setup_client: openai.OpenAI
) -> None:
    assistant = setup_client.beta.assistants.create(model="gpt-4o")
    thread = setup_client.beta.threads.create()
    made = []
    for _ in range(25):  # more than one page of 20
        run = setup_client.beta.threads.runs.create(thread.id, assistant_id=assistant.id)
        fake.complete_run(thread.id, run.id)
        made.append(run.id)
    seen: dict[str, Any] = {}

    @job(id=unique_id("oai-runs-list"), integrations={"openai": integration})
    async def lists(payload: Any, io: Any, ctx: Any) -> Any:
        seen["page"] = await io.openai.beta.threads.runs.list("list", thread.id)
        seen["all"] = await io.openai.beta.threads.runs.list_all("all", thread.id, order="asc")
        return len(seen["page"].data)

    before = fake.count("GET /v1/threads/{thread_id}/runs")
    run = await oai.run(lists)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == 25
    assert isinstance(seen["page"], AsyncCursorPage) and not seen["page"].has_more
    assert sorted(r.id for r in seen["page"].data) == sorted(made)
    assert [r.id for r in seen["all"]] == made and all(isinstance(r, Run) for r in seen["all"])
    assert fake.count("GET /v1/threads/{thread_id}/runs") - before == 4  # 2 pages each
    assert (await oai.task(run["id"], "all"))["name"] == "beta.threads.runs.list_all"


async def test_a_callers_idempotency_key_wins(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-idem"), integrations={"openai": integration})
    async def keyed(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.chat.completions.create(
            "mine", extra_headers={"idempotency-key": "order-42"}, **CHAT
        )
        await io.openai.chat.completions.create("theirs", **CHAT)

    run = await oai.run(keyed)
    assert run["status"] == "COMPLETED", run["error"]
    keys = fake.count_by_idempotency_key()
    assert keys["order-42"] == 1
    assert keys[f"{run['id']}:theirs"] == 1
    assert "order-42" not in json.dumps(await oai.task(run["id"], "mine"), default=str)


async def test_a_deleted_file_ends_the_wait(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    fake.next_file_status = "deleted"

    @job(id=unique_id("oai-deleted"), integrations={"openai": integration})
    async def upload(payload: Any, io: Any, ctx: Any) -> Any:
        file = await io.openai.files.create_and_wait_for_processing(
            "upload", purpose="assistants", file=b"a,b\n1,2\n"
        )
        return file.status

    run = await oai.run(upload)
    assert (run["status"], run["output"]) == ("COMPLETED", "deleted")


async def test_an_already_processed_file_is_not_polled(oai: Any) -> None:
    with FakeOpenAI(file_seconds=0) as instant:
        integration = OpenAI(
            api_key="sk-instant-000000000",
            base_url=instant.base_url,
            poll_interval=30,
            max_poll_interval=60,
        )
        seen: dict[str, Any] = {}

        @job(id=unique_id("oai-instant"), integrations={"openai": integration})
        async def upload(payload: Any, io: Any, ctx: Any) -> Any:
            seen["file"] = await io.openai.files.create_and_wait_for_processing(
                "upload", purpose="assistants", file=b"x"
            )
            return seen["file"].status

        run = await oai.run(upload, timeout=20)  # a poll would come after 30 s
        assert (run["status"], run["output"]) == ("COMPLETED", "processed")
        assert isinstance(seen["file"], FileObject)
        assert instant.count("GET /v1/files/{file_id}") == 0
        wait = await oai.task(run["id"], "upload")
        assert (wait["status"], wait["name"]) == (
            "COMPLETED",
            "files.create_and_wait_for_processing",
        )
        assert wait["output"]["status"] == "processed"
        await integration.aclose()


async def test_a_retry_policy_per_call(oai: Any, fake: FakeOpenAI, integration: OpenAI) -> None:
    fake.fail_next("POST /v1/chat/completions", 500, times=5)

    @job(id=unique_id("oai-retry-call"), integrations={"openai": integration})
    async def once(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.chat.completions.create(
            "chat", retry=RetryPolicy(max_attempts=2, min_delay=0.01, max_delay=0.02), **CHAT
        )

    run = await oai.run(once)
    assert run["status"] == "FAILED"
    assert fake.count("POST /v1/chat/completions") == 2  # not the integration's 4
    row = await oai.task(run["id"], "chat")
    assert "retry" not in row["params"]
    assert all("retry" not in (r.json or {}) for r in fake.requests)


async def test_a_poll_schedule_per_call(
    oai: Any, fake: FakeOpenAI, integration: OpenAI, setup_client: openai.OpenAI
) -> None:
    assistant = setup_client.beta.assistants.create(model="gpt-4o")

    @job(id=unique_id("oai-schedule"), integrations={"openai": integration})
    async def scheduled(payload: Any, io: Any, ctx: Any) -> Any:
        run = await io.openai.beta.threads.create_and_run_until_completion(
            "run",
            assistant_id=assistant.id,
            poll_interval=0.03,
            max_poll_interval=0.2,
            poll_backoff=2.0,
            thread={"messages": [{"role": "user", "content": "go"}]},
        )
        file = await io.openai.files.create("file", purpose="assistants", file=b"x")
        done = await io.openai.files.wait_for_processing("file-wait", file.id, poll_interval=0.04)
        return [run.status, done.status]

    run = await oai.run(scheduled)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == ["completed", "processed"]
    state = poll_state(oai.db_path, run["id"], "run")
    assert (state["interval"], state["max_interval"], state["backoff"]) == (0.03, 0.2, 2.0)
    assert poll_state(oai.db_path, run["id"], "file-wait")["interval"] == 0.04
    sent = [r.json for r in fake.requests if r.route == "POST /v1/threads/runs"]
    assert "poll_interval" not in sent[0]


async def test_unknown_wait_options_are_refused(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-typo"), integrations={"openai": integration})
    async def typo(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.beta.threads.runs.wait_for_completion(
            "w", "thread_1", "run_1", poll_intervall=1
        )

    run = await oai.run(typo)
    assert run["status"] == "FAILED"
    assert "unknown option(s) poll_intervall" in run["error"]["message"]
    assert fake.count() == 0


async def test_files_list_and_responses_cancel(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    fake.hold("responses")

    @job(id=unique_id("oai-list-cancel"), integrations={"openai": integration})
    async def misc(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.files.create("f1", purpose="assistants", file=b"1")
        await io.openai.files.create("f2", purpose="batch", file=b"2")
        page = await io.openai.files.list("list", purpose="assistants")
        started = await io.openai.responses.create(
            "bg", model="gpt-4o", input="hi", background=True
        )
        cancelled = await io.openai.responses.cancel("cancel", started.id)
        return [len(page.data), cancelled.status]

    run = await oai.run(misc)
    fake.release("responses")
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == [1, "cancelled"]
    assert fake.count("POST /v1/responses/{response_id}/cancel") == 1


async def test_fine_tuning_jobs_and_their_durable_wait(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    fake.hold("fine_tuning")
    seen: dict[str, Any] = {}

    @job(id=unique_id("oai-fine-tune"), integrations={"openai": integration})
    async def tune(payload: Any, io: Any, ctx: Any) -> Any:
        data = await io.openai.files.create("data", purpose="fine-tune", file=b'{"x": 1}\n')
        tuned = await io.openai.fine_tuning.jobs.create_and_wait_for_completion(
            "tune", model="gpt-4o-mini", training_file=data.id
        )
        seen["events"] = await io.openai.fine_tuning.jobs.list_events("events", tuned.id)
        seen["jobs"] = await io.openai.fine_tuning.jobs.list("jobs")
        seen["model"] = await io.openai.models.retrieve("model", tuned.fine_tuned_model)
        other = await io.openai.fine_tuning.jobs.create(
            "other", model="gpt-4o-mini", training_file=data.id
        )
        seen["cancel"] = await io.openai.fine_tuning.jobs.cancel("cancel", other.id)
        seen["again"] = await io.openai.fine_tuning.jobs.retrieve("again", other.id)
        seen["deleted"] = await io.openai.models.delete("delete", tuned.fine_tuned_model)
        return [tuned.status, tuned.fine_tuned_model]

    await oai.harness.start(tune)
    run_id = await oai.engine.trigger(tune.id, {})
    for _ in range(1000):  # the job is held running: the run waits, unloaded
        rows = await oai.tasks(run_id)
        if any(r["key"] == "tune" and r["status"] == "WAITING" for r in rows):
            break
        await asyncio.sleep(0.02)
    assert (await oai.engine.store.get_run(run_id))["status"] in ("WAITING", "RUNNING")
    polls = fake.count("GET /v1/fine_tuning/jobs/{job_id}")
    fake.release("fine_tuning")
    run = await oai.engine.wait_for(run_id, 30)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"][0] == "succeeded" and run["output"][1].startswith("ft:gpt-4o-mini:")
    assert fake.count("POST /v1/fine_tuning/jobs") == 2
    assert fake.count("GET /v1/fine_tuning/jobs/{job_id}") > polls
    assert "The job has successfully completed" in [e.message for e in seen["events"].data]
    assert len(seen["jobs"].data) == 1
    assert seen["model"].id == run["output"][1]
    assert seen["cancel"].status == "cancelled" and seen["again"].status == "cancelled"
    assert seen["deleted"].deleted is True
    wait = await oai.task(run_id, "tune")
    assert wait["name"] == "fine_tuning.jobs.create_and_wait_for_completion"


async def test_image_edits_and_variations_upload_and_record_a_summary(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-images"), integrations={"openai": integration})
    async def images(payload: Any, io: Any, ctx: Any) -> Any:
        edit = await io.openai.images.edit(
            "edit", image=("a.png", b"png-bytes"), mask=b"m", prompt="add a hat"
        )
        variations = await io.openai.images.create_variation("vary", image=b"png-bytes", n=2)
        return [len(edit.data), len(variations.data)]

    run = await oai.run(images)
    assert run["status"] == "COMPLETED", run["error"]
    assert run["output"] == [1, 2]
    row = await oai.task(run["id"], "edit")
    assert row["params"]["image"]["size"] == len(b"png-bytes")
    assert "sha256" in row["params"]["mask"] and row["params"]["prompt"] == "add a hat"
    assert fake.count("POST /v1/images/edits") == 1
    assert fake.count("POST /v1/images/variations") == 1


async def test_a_base_model_cannot_be_deleted(
    oai: Any, fake: FakeOpenAI, integration: OpenAI
) -> None:
    @job(id=unique_id("oai-model-delete"), integrations={"openai": integration})
    async def delete(payload: Any, io: Any, ctx: Any) -> Any:
        await io.openai.models.delete("delete", "gpt-4o")

    run = await oai.run(delete)
    assert run["status"] == "FAILED"
    assert "403" in run["error"]["message"] and "no retry can fix this" in run["error"]["message"]
    assert fake.count("DELETE /v1/models/{model}") == 1
