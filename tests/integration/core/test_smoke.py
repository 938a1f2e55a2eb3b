import asyncio
from typing import Any

from support import Harness, unique_id

from engine import IO, Context, Task, job


async def test_a_job_with_tasks_and_waits_completes(harness: Harness) -> None:
    calls = []

    @job(id=unique_id("smoke"))
    async def smoke(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> Any:
            calls.append(task.key)
            return payload["n"] * 2

        a = await io.run_task("a", step)
        await io.wait("w", 0.05)
        b, _ = await asyncio.gather(io.run_task("b", step), io.wait("w2", 0.05))
        return {"a": a, "b": b}

    await harness.start(smoke)
    view = await harness.run(smoke, {"n": 2})
    assert view["status"] == "COMPLETED", view["error"]
    assert view["output"] == {"a": 4, "b": 4}
    assert calls == ["a", "b"]
    assert [t["key"] for t in view["tasks"]] == ["a", "w", "b", "w2"]
