"""The seed's "Data visualizer", in Python: upload a CSV, create a code-interpreter assistant,
run a thread until it completes, and list the messages.

Run it end to end (a worker and a trigger in one process, on ./engine.db):

    python examples/data_visualizer.py

With no OPENAI_API_KEY set it runs offline against the local fake OpenAI server
(integrations.openai.testing) and says so. As an app for a long-running worker:

    engine run examples/data_visualizer.py
    engine trigger data-visualizer
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from engine import IO, Context, Engine, Worker, job
from integrations.openai import OpenAI

DATA = Path(__file__).parent / "fixtures" / "mydata.csv"

openai = OpenAI(id="openai")  # api key / base url from OPENAI_API_KEY / OPENAI_BASE_URL


@job(id="data-visualizer", version="1.0.0", integrations={"openai": openai})
async def data_visualizer(payload: dict, io: IO, ctx: Context) -> dict:
    file = await io.openai.files.create_and_wait_for_processing(
        "upload-file", purpose="assistants", file=DATA
    )
    assistant = await io.openai.beta.assistants.create(
        "create-assistant",
        name="Data visualizer",
        description=(
            "You are great at creating beautiful data visualizations. You analyze data present "
            "in .csv files, understand trends, and come up with data visualizations relevant "
            "to those trends. You also share a brief text summary of the trends observed."
        ),
        model="gpt-4o",
        tools=[{"type": "code_interpreter"}],
        tool_resources={"code_interpreter": {"file_ids": [file.id]}},
    )
    run = await io.openai.beta.threads.create_and_run_until_completion(
        "create-thread",
        assistant_id=assistant.id,
        thread={
            "messages": [
                {
                    "role": "user",
                    "content": "Create 3 data visualizations based on the trends in this file.",
                }
            ]
        },
    )
    if run.status != "completed":
        raise RuntimeError(f"Run finished with status {run.status}: {run.last_error}")
    messages = await io.openai.beta.threads.messages.list("list-messages", run.thread_id)
    io.logger.info("assistant answered", messages=len(messages.data))
    return {"messages": [m.id for m in messages.data]}


async def main() -> int:
    fake = None
    if not os.environ.get("OPENAI_API_KEY"):
        from integrations.openai.testing import FakeOpenAI

        fake = FakeOpenAI(run_seconds=1.5, file_seconds=0.5)
        fake.start()
        os.environ["OPENAI_API_KEY"] = "sk-offline-fake-key"
        os.environ["OPENAI_BASE_URL"] = fake.base_url
        print(
            f"OPENAI_API_KEY is not set: running OFFLINE against the local fake OpenAI "
            f"server at {fake.base_url} (set OPENAI_API_KEY to call OpenAI for real)."
        )
    else:
        print("OPENAI_API_KEY is set: calling OpenAI for real (this costs money).")

    from engine.cli import print_run

    url = os.environ.get("ENGINE_DATABASE_URL", "sqlite+aiosqlite:///engine.db")
    worker = Worker([data_visualizer], url)
    worker_task = asyncio.create_task(worker.run())
    async with Engine(url) as engine:
        run_id = await engine.trigger("data-visualizer", {})
        print(f"triggered run {run_id} on {url}; the worker is executing it...")
        waiting = asyncio.create_task(engine.wait_for(run_id, timeout=900))
        await asyncio.wait({waiting, worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():  # the worker died: say why instead of waiting forever
            waiting.cancel()
            worker_task.result()
        run = waiting.result()
        print_run(await engine.show_run(run_id), await engine.run_logs(run_id))
        print(f"\ninspect it again with: {_engine_command()} runs show {run_id}")
    worker.stop()
    await worker_task
    if fake is not None:
        fake.stop()
    return 0 if run["status"] == "COMPLETED" else 1


def _engine_command() -> str:
    """The `engine` command as it can be typed here: after the README's one-liner the venv's
    bin/ is not on PATH, so a bare `engine` would not be found."""
    script = Path(sys.executable).parent / "engine"
    if not script.exists():
        return f"{sys.executable} -m engine"
    if shutil.which("engine") == str(script):
        return "engine"
    try:
        return str(script.relative_to(Path.cwd()))  # e.g. .venv/bin/engine
    except ValueError:
        return str(script)


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
