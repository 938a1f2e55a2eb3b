"""What the job-body fragments of the docs take from their surroundings (marker `job-body`).

A fragment such as ``data = await io.run_task("fetch-report", fetch_report, ...)`` shows a
step of a job; the reader's job defines `fetch_report` and `report_id`. The doc test runs the
fragment as the body of a real job (see `jobbody.py`), and this module stands in for the rest:
small task functions, and the OpenAI objects a fragment works on (an uploaded file, an
assistant, a thread...), created on the fake OpenAI server by `given` before the fragment runs.
Placeholder ids in a fragment (`"asst_abc123"`, `"thread_abc123"`, ...) stand for those objects.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from engine import IO, Task
from integrations.openai import OpenAI

__all__ = [
    "Path",
    "asyncio",
    "enrich",
    "fetch_document",
    "fetch_report",
    "job",
    "my_api",
    "my_tool",
    "report_id",
    "start_export",
]

# The integration every job-body job uses; fast polls, the fake's address from the environment.
openai = OpenAI(id="openai", poll_interval=0.05, max_poll_interval=0.2)

report_id = 42
job = {"id": "exp_1"}  # what the "start-export" step of the previous fragment returned


async def fetch_report(task: Task) -> dict[str, Any]:
    return {"id": task.params["id"], "pages": 3}


async def fetch_document(task: Task) -> str:
    return f"the document at {task.params['url']}"


async def enrich(task: Task) -> dict[str, Any]:
    return {"id": task.params["id"], "enriched": True}


async def start_export(task: Task) -> dict[str, str]:
    return {"id": "exp_1"}


class _MyApi:
    """A stand-in for the reader's own API client."""

    async def get_export(self, export_id: str) -> dict[str, str]:
        return {"id": export_id, "state": "done"}


my_api = _MyApi()


async def my_tool(io: IO, call: Any) -> str:
    return f"the answer to {call.function.name}"


# -- the OpenAI objects a fragment works on ----------------------------------------------------

PLACEHOLDERS = {
    "asst_abc123": "plain_assistant",
    "thread_abc123": "thread",
    "msg_abc123": "message",
    "run_abc123": "run",
}
OPENAI_NAMES = frozenset({"file", "assistant", "thread", "message", "payload", "ids"})


async def given(io: IO, payload: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """The OpenAI objects the fragment uses (`names`), created as steps of its run."""
    if not set(names) & OPENAI_NAMES:
        return {}
    ai: Any = io  # `io.openai` is set per integration at run time
    file = await ai.openai.files.create(
        "given-file", purpose="assistants", file=("data.csv", b"month,sales\n1,10\n")
    )
    plain = await ai.openai.beta.assistants.create("given-plain-assistant", model="gpt-4o")
    # `assistant` has a function tool, so a run of it asks for tool outputs (requires_action).
    assistant = await ai.openai.beta.assistants.create(
        "given-assistant",
        model="gpt-4o",
        tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
    )
    thread = await ai.openai.beta.threads.create("given-thread")
    message = await ai.openai.beta.threads.messages.create(
        "given-message", thread.id, role="user", content="Hello"
    )
    run = await ai.openai.beta.threads.runs.create_and_wait_for_completion(
        "given-run", thread.id, assistant_id=plain.id
    )
    objects = {
        "file": file,
        "plain_assistant": plain,
        "assistant": assistant,
        "thread": thread,
        "message": message,
        "run": run,
    }
    return {
        **objects,
        "payload": {**payload, "assistant_id": plain.id},
        "ids": {placeholder: objects[name].id for placeholder, name in PLACEHOLDERS.items()},
    }
