"""Jobs that suspend in each kind of OpenAI wait (for the kill -9 tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import Context, job
from integrations.openai import OpenAI

openai = OpenAI(id="openai", poll_interval=0.2, max_poll_interval=0.5)
WITH = {"openai": openai}


@job(id="oa-file", integrations=WITH)
async def file_job(payload: dict[str, Any], io: Any, ctx: Context) -> dict[str, Any]:
    file = await io.openai.files.create_and_wait_for_processing(
        "upload", purpose="assistants", file=Path(payload["path"])
    )
    return {"id": file.id, "status": file.status}


@job(id="oa-thread-run", integrations=WITH)
async def thread_run_job(payload: dict[str, Any], io: Any, ctx: Context) -> dict[str, Any]:
    run = await io.openai.beta.threads.create_and_run_until_completion(
        "thread-run",
        assistant_id=payload["assistant_id"],
        thread={"messages": [{"role": "user", "content": "hello"}]},
    )
    return {"id": run.id, "status": run.status}


@job(id="oa-run", integrations=WITH)
async def run_job(payload: dict[str, Any], io: Any, ctx: Context) -> dict[str, Any]:
    run = await io.openai.beta.threads.runs.create_and_wait_for_completion(
        "run", payload["thread_id"], assistant_id=payload["assistant_id"]
    )
    return {"id": run.id, "status": run.status}


@job(id="oa-wait-run", integrations=WITH)
async def wait_run_job(payload: dict[str, Any], io: Any, ctx: Context) -> dict[str, Any]:
    run = await io.openai.beta.threads.runs.create(
        "create-run", payload["thread_id"], assistant_id=payload["assistant_id"]
    )
    done = await io.openai.beta.threads.runs.wait_for_completion(
        "wait", payload["thread_id"], run.id
    )
    return {"id": done.id, "status": done.status}


@job(id="oa-response", integrations=WITH)
async def response_job(payload: dict[str, Any], io: Any, ctx: Context) -> dict[str, Any]:
    response = await io.openai.responses.create_and_wait_for_completion(
        "respond", model="gpt-4o-mini", input="hello", background=True
    )
    return {"id": response.id, "status": response.status}
