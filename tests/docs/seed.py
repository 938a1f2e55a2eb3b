"""A database with real rows for the SQL of docs/schema.md: what a few days of a real worker leave.

`seeded(url)` runs a real `Worker` against the fake OpenAI server and leaves, while its context
is open: completed runs, a failed run with an ERRORED task, a run WAITING on a sleep, an OpenAI
call retried after a 429 that then succeeded, one WAITING after a 500, one WAITING after a 429,
a streamed chat completion, and one run RUNNING in a step (so "who holds what" has an answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from engine import IO, Context, Engine, RetryPolicy, Worker, job
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

CHAT = "POST /v1/chat/completions"
# Long enough that a waiting retry is still waiting when the queries run; short enough that an
# immediate retry does not slow the seed down.
LONG, SHORT = 3600.0, 0.01

openai = OpenAI(
    id="doc-seed-openai",
    api_key="sk-doc-seed-key",  # the fake's address comes from OPENAI_BASE_URL, set in seeded()
    retry=RetryPolicy(max_attempts=3, min_delay=SHORT, max_delay=LONG),
)
_held: dict[str, asyncio.Event] = {}


@job(id="doc-seed-greet", version="1")
async def greet(payload: dict[str, Any], io: IO, ctx: Context) -> dict[str, Any]:
    async def compose(task: Any) -> str:
        return f"Hello, {payload['name']}!"

    async def shout(task: Any) -> str:
        return text.upper()

    text = await io.run_task("compose", compose)
    await io.run_task("shout", shout)
    io.logger.info("greeted", name=payload["name"])
    return {"text": text}


@job(id="doc-seed-flaky", version="1")
async def flaky(payload: dict[str, Any], io: IO, ctx: Context) -> None:
    async def fetch(task: Any) -> None:
        raise ConnectionError("helpdesk unreachable")

    await io.run_task("fetch", fetch)


@job(id="doc-seed-sleepy", version="1")
async def sleepy(payload: dict[str, Any], io: IO, ctx: Context) -> None:
    await io.wait("overnight", LONG)


@job(id="doc-seed-chat", version="1", integrations={"openai": openai})
async def chat(payload: dict[str, Any], io: IO, ctx: Context) -> str:
    untyped: Any = io  # `io.openai` is set per integration at run time
    reply = await untyped.openai.chat.completions.create(
        "summarize", model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
    )
    return str(reply.choices[0].message.content)


@job(id="doc-seed-stream", version="1", integrations={"openai": openai})
async def streamed(payload: dict[str, Any], io: IO, ctx: Context) -> str:
    untyped: Any = io
    reply = await untyped.openai.chat.completions.create(
        "answer", model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    return str(reply.choices[0].message.content)


@job(id="doc-seed-busy", version="1")
async def busy(payload: dict[str, Any], io: IO, ctx: Context) -> None:
    async def crunch(task: Any) -> None:
        await _held["busy"].wait()

    await io.run_task("crunch", crunch)


JOBS = [greet, flaky, sleepy, chat, streamed, busy]


@dataclass
class Seed:
    url: str
    runs: dict[str, str] = field(default_factory=dict)  # what each run is -> its id


async def _until(engine: Engine, run_id: str, status: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (now := (await engine.get_run(run_id))["status"]) != status:
        assert time.monotonic() < deadline, f"seed run {run_id} is {now}, wanted {status}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def seeded(url: str) -> AsyncIterator[Seed]:
    seed = Seed(url)
    fake = FakeOpenAI().start()
    saved = os.environ.get("OPENAI_BASE_URL")
    os.environ["OPENAI_BASE_URL"] = fake.base_url
    _held["busy"] = asyncio.Event()
    worker = Worker(JOBS, url, lease_seconds=30)
    running = asyncio.create_task(worker.run())
    try:
        async with Engine(url) as engine:
            await _until_ready(engine, running)

            async def run(name: str, job_id: str, status: str, payload: Any = None) -> None:
                seed.runs[name] = await engine.trigger(job_id, payload or {})
                await _until(engine, seed.runs[name], status)

            await run("completed", "doc-seed-greet", "COMPLETED", {"name": "Ada"})
            await run("failed", "doc-seed-flaky", "FAILED")
            await run("sleeping", "doc-seed-sleepy", "WAITING")
            fake.fail_next(CHAT, 429, retry_after=SHORT)
            await run("rate-limited-then-ok", "doc-seed-chat", "COMPLETED")
            fake.fail_next(CHAT, 500, retry_after=LONG)
            await run("server-error-waiting", "doc-seed-chat", "WAITING")
            fake.fail_next(CHAT, 429, retry_after=LONG)
            await run("rate-limited-waiting", "doc-seed-chat", "WAITING")
            await run("streamed", "doc-seed-stream", "COMPLETED")
            await run("running", "doc-seed-busy", "RUNNING")
            yield seed
    finally:
        _held["busy"].set()
        worker.stop()
        await asyncio.wait_for(running, 30)
        await openai.aclose()
        fake.stop()
        if saved is None:
            os.environ.pop("OPENAI_BASE_URL", None)
        else:
            os.environ["OPENAI_BASE_URL"] = saved


async def _until_ready(engine: Engine, running: asyncio.Task[None]) -> None:
    """The worker has upgraded the schema and registered the jobs (or died: say why)."""
    deadline = time.monotonic() + 60
    while True:
        if running.done():
            running.result()
            raise AssertionError("the seed's worker stopped before it was ready")
        with contextlib.suppress(Exception):
            if {j["job_id"] for j in await engine.jobs()} >= {j.id for j in JOBS}:
                return
        assert time.monotonic() < deadline, "the seed's worker was not ready after 60 s"
        await asyncio.sleep(0.05)
