"""Jobs for the CLI acceptance tests. Paths the jobs write to come in the payload."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from engine import job


def append(path: str, line: str) -> None:
    """One O_APPEND write per line: concurrent writers never interleave a line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def exists(path: str) -> bool:
    return os.path.exists(path)


class Order(BaseModel):
    n: int
    label: str = "x"


@job(id="typed", version="1", payload=Order)
async def typed(payload: Order, io: Any, ctx: Any) -> dict[str, Any]:
    async def double(task: Any) -> int:
        return payload.n * 2

    return {"doubled": await io.run_task("double", double), "label": payload.label}


@job(id="steps", version="1")
async def steps(payload: Any, io: Any, ctx: Any) -> dict[str, Any]:
    async def inner(task: Any) -> str:
        return "in"

    async def outer(task: Any) -> dict[str, Any]:
        return {"inner": await io.run_task("inner", inner)}

    async def second(task: Any) -> list[int]:
        return [1, 2, 3]

    a = await io.run_task("outer", outer, params={"p": 1})
    b = await io.run_task("second", second)
    return {"a": a, "b": b}


@job(id="sleeper", version="1")
async def sleeper(payload: Any, io: Any, ctx: Any) -> str:
    async def before(task: Any) -> str:
        return "ok"

    await io.run_task("before", before)
    await io.wait("nap", payload.get("seconds", 30) if payload else 30)
    return "woke"


@job(id="flaky", version="1")
async def flaky(payload: dict[str, Any], io: Any, ctx: Any) -> str:
    log, marker = payload["log"], payload["marker"]

    async def first(task: Any) -> str:
        append(log, "first")
        return "first done"

    async def second(task: Any) -> str:
        append(log, "second")
        if not exists(marker):
            raise RuntimeError("the marker file is missing")
        return "second done"

    await io.run_task("first", first)
    done: str = await io.run_task("second", second)
    return done
