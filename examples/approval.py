"""A draft written by the model, approved by a person, then published.

The run asks OpenAI for a draft, then waits (unloaded: no worker holds it) for the event
"draft.reviewed" about its own draft, for up to three days. A reviewer approves or rejects it
from any shell with `engine events send`; an approved draft is published (written to
./published/DRAFT_ID.md), a rejected or expired one is not. On weekdays at 09:00 (Paris) a
schedule starts one such draft as a child run of its tick's run.

Run it end to end (a worker and a trigger in one process, on ./engine.db):

    python examples/approval.py

It prints the `engine events send ...` command that approves the draft: run it in another
shell, and the run goes on at once. With no OPENAI_API_KEY set it runs offline against the
local fake OpenAI server (integrations.openai.testing) and says so. As an app for a
long-running worker:

    engine run examples/approval.py
    engine trigger draft-approval --payload '{"draft_id": "d-1", "topic": "durable runs"}'
    engine events send draft.reviewed --payload '{"draft_id": "d-1", "approved": true}'
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from engine import IO, Context, Engine, Task, Worker, job
from integrations.openai import OpenAI

openai = OpenAI(id="openai")  # api key / base url from OPENAI_API_KEY / OPENAI_BASE_URL


@job(id="draft-approval", version="1", integrations={"openai": openai})
async def draft_approval(payload: dict[str, Any], io: IO, ctx: Context) -> dict[str, Any]:
    draft_id = payload["draft_id"]
    completion = await io.openai.chat.completions.create(
        "write-draft",
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "You write short, plain announcements."},
            {"role": "user", "content": f"Write a three-sentence post about {payload['topic']}."},
        ],
    )
    draft = completion.choices[0].message.content or ""
    io.logger.info("draft written, waiting for a review", draft_id=draft_id)

    # Unloaded until a reviewer sends the event about this draft (or three days pass).
    review = await io.wait_for_event(
        "review", "draft.reviewed", match={"draft_id": draft_id}, timeout=timedelta(days=3)
    )
    if review is None:
        return {"draft_id": draft_id, "status": "expired"}
    if not review.get("approved"):
        return {"draft_id": draft_id, "status": "rejected", "note": review.get("note")}

    async def publish(task: Task) -> str:
        path = Path("published") / f"{draft_id}.md"
        path.parent.mkdir(exist_ok=True)
        path.write_text(draft + "\n", encoding="utf-8")
        return str(path)

    return {
        "draft_id": draft_id,
        "status": "published",
        "path": await io.run_task("publish", publish),
    }


@job(
    id="weekday-draft",
    version="1",
    schedule="0 9 * * 1-5",  # 09:00 on weekdays, Paris time: one run per tick across all workers
    timezone="Europe/Paris",
)
async def weekday_draft(payload: dict[str, Any], io: IO, ctx: Context) -> dict[str, Any]:
    # A scheduled run's payload is {"scheduled_at": ISO time of its tick} (docs/triggers.md).
    day = payload["scheduled_at"][:10]
    # The draft and its review are a child run: this run waits for it, unloaded.
    outcome: dict[str, Any] = await io.invoke(
        "draft", "draft-approval", {"draft_id": f"daily-{day}", "topic": f"our news of {day}"}
    )
    return outcome


def approve_command(draft_id: str, url: str) -> str:
    """The command a reviewer types to approve the draft."""
    payload = json.dumps({"draft_id": draft_id, "approved": True})
    engine = Path(sys.executable).parent / "engine"
    program = str(engine) if engine.exists() else f"{sys.executable} -m engine"
    return (
        f"{program} events send draft.reviewed --payload {shlex.quote(payload)} "
        f"--database-url {shlex.quote(url)}"
    )


async def main() -> int:
    fake = None
    if not os.environ.get("OPENAI_API_KEY"):
        from integrations.openai.testing import FakeOpenAI

        fake = FakeOpenAI()
        fake.start()
        os.environ["OPENAI_API_KEY"] = "sk-offline-fake-key"
        os.environ["OPENAI_BASE_URL"] = fake.base_url
        print(
            f"OPENAI_API_KEY is not set: running OFFLINE against the local fake OpenAI "
            f"server at {fake.base_url} (set OPENAI_API_KEY to call OpenAI for real)."
        )
    url = os.environ.get("ENGINE_DATABASE_URL", "sqlite+aiosqlite:///engine.db")
    worker = Worker([draft_approval, weekday_draft], url)
    worker_task = asyncio.create_task(worker.run())
    draft_id = f"d-{uuid.uuid4().hex[:8]}"
    async with Engine(url) as engine:
        run_id = await engine.trigger(
            "draft-approval", {"draft_id": draft_id, "topic": "durable execution"}
        )
        print(f"triggered run {run_id}: the model writes draft {draft_id}...")
        while (await engine.get_run(run_id))["status"] != "WAITING":
            if worker_task.done():
                worker_task.result()  # the worker died: say why
            await asyncio.sleep(0.1)
        print("the run is waiting for a review; approve the draft with:", flush=True)
        print(f"  {approve_command(draft_id, url)}", flush=True)
        waiting = asyncio.create_task(engine.wait_for(run_id, timeout=3600))
        await asyncio.wait({waiting, worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            worker_task.result()
        run = waiting.result()
        print(f"run {run_id} {run['status']}: {json.dumps(run['output'])}")
    worker.stop()
    await worker_task
    if fake is not None:
        fake.stop()
    return 0 if run["status"] == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
