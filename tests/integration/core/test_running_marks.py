"""The delayed RUNNING mark of an attempt (engine.io, MARK_RUNNING_AFTER): one loop timer per
execution serves every attempt, so attempts that finish quickly are never marked and each one
still going after the delay is, including attempts started while an earlier one waits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from support import Harness, unique_id

from engine import IO, Context, Task, job

pytestmark = pytest.mark.timeout(120)


async def test_every_attempt_still_going_after_the_delay_is_marked_running(
    harness: Harness,
) -> None:
    release = asyncio.Event()

    async def held(task: Task) -> str:
        await release.wait()
        return task.key

    async def quick(task: Task) -> str:
        return task.key

    @job(id=unique_id("marks"))
    async def marks(payload: Any, io: IO, ctx: Context) -> list[str]:
        async def later() -> list[str]:
            done = [await io.run_task(f"q{i}", quick) for i in range(3)]
            return [*done, await io.run_task("second", held)]

        first, rest = await asyncio.gather(io.run_task("first", held), later())
        return [first, *rest]

    await harness.start(marks)
    run_id = await harness.engine.trigger(marks.id)

    async def both_marked() -> dict[str, str]:
        # The two held attempts started about three quick tasks apart: one timer marks both.
        for _ in range(3000):
            view = await harness.engine.show_run(run_id)
            seen = {t["key"]: t["status"] for t in view["tasks"]}
            if seen.get("first") == "RUNNING" and seen.get("second") == "RUNNING":
                return seen
            await asyncio.sleep(0.02)
        raise AssertionError(f"the held attempts were not both marked RUNNING: {seen}")

    seen = await asyncio.wait_for(both_marked(), 60)
    assert {k: seen[k] for k in ("q0", "q1", "q2")} == dict.fromkeys(
        ("q0", "q1", "q2"), "COMPLETED"
    )
    release.set()
    view = await harness.engine.wait_for(run_id, 60)
    assert view["status"] == "COMPLETED"
    assert view["output"] == ["first", "q0", "q1", "q2", "second"]
