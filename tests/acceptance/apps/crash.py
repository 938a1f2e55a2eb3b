"""Jobs for the crash tests: every task appends a line to the file named in the payload."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from engine import job


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def step(path: str, line: str, sleep: float = 0.0) -> Any:
    async def fn(task: Any) -> str:
        append(path, line)
        if sleep:
            await asyncio.sleep(sleep)
        return line

    return fn


@job(id="many-tasks", version="1")
async def many_tasks(payload: dict[str, Any], io: Any, ctx: Any) -> dict[str, Any]:
    done = []
    for i in range(payload["n"]):
        key = f"t{i:02d}"
        done.append(await io.run_task(key, step(payload["log"], key, payload["sleep"])))
    return {"count": len(done)}


@job(id="napper", version="1")
async def napper(payload: dict[str, Any], io: Any, ctx: Any) -> str:
    await io.run_task("before", step(payload["log"], "before"))
    await io.wait("nap", payload["seconds"])
    await io.run_task("after", step(payload["log"], "after"))
    return "rested"


@job(id="poller", version="1")
async def poller(payload: dict[str, Any], io: Any, ctx: Any) -> dict[str, Any]:
    await io.run_task("before", step(payload["log"], "before"))
    body = await io.background_poll("status", payload["url"], interval=0.2, timeout=60)
    await io.run_task("after", step(payload["log"], "after"))
    return {"polled": body}


@job(id="long", version="1")
async def long(payload: dict[str, Any], io: Any, ctx: Any) -> str:
    log = payload["log"]

    async def slow(task: Any) -> str:
        append(log, "long-start")
        await asyncio.sleep(payload["seconds"])
        append(log, "long-end")
        return "slow done"

    await io.run_task("long", slow)
    await io.run_task("after", step(log, "after"))
    return "finished"


@job(id="hangs-once", version="1")
async def hangs_once(payload: dict[str, Any], io: Any, ctx: Any) -> dict[str, Any]:
    """Its step hangs on its first attempt (until the test kills the worker); the next returns."""

    async def hang(task: Any) -> int:
        append(payload["log"], f"attempt {task.attempt}")
        if task.attempt == 1:
            await asyncio.sleep(3600)
        return int(task.attempt)

    return {"attempt": await io.run_task("hang", hang)}


# Child runs: a parent fans out to children that each wait on a background poll the test
# releases (test_children_crash.py).


@job(id="fan-parent", version="1")
async def fan_parent(payload: dict[str, Any], io: Any, ctx: Any) -> list[Any]:
    log = payload["log"]
    await io.run_task("before", step(log, "before"))
    results = await asyncio.gather(
        *(
            io.invoke(f"child-{i}", "fan-child", {"log": log, "i": i, "url": payload["url"]})
            for i in range(payload["n"])
        )
    )
    await io.run_task("after", step(log, "after"))
    return list(results)


@job(id="fan-child", version="1")
async def fan_child(payload: dict[str, Any], io: Any, ctx: Any) -> int:
    log, i = payload["log"], payload["i"]
    await io.run_task("work", step(log, f"work {i}"))
    await io.background_poll("gate", payload["url"], interval=0.2, timeout=300)
    await io.run_task("done", step(log, f"done {i}"))
    return int(i) * 10
