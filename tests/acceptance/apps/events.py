"""Jobs for the event and signal tests: every step appends a line to the file in the payload."""

from __future__ import annotations

import os
from typing import Any

from engine import IO, Context, job


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def step(path: str, line: str) -> Any:
    async def fn(task: Any) -> str:
        append(path, line)
        return line

    return fn


@job(id="awaits-review", version="1")
async def awaits_review(payload: dict[str, Any], io: IO, ctx: Context) -> Any:
    await io.run_task("before", step(payload["log"], "before"))
    review = await io.wait_for_event("review", "doc.reviewed", match={"doc": payload["doc"]})
    await io.run_task("after", step(payload["log"], "after"))
    return review


@job(id="awaits-signal", version="1")
async def awaits_signal(payload: dict[str, Any], io: IO, ctx: Context) -> Any:
    await io.run_task("before", step(payload["log"], "before"))
    go = await io.wait_for_signal("go", "go")
    await io.run_task("after", step(payload["log"], "after"))
    return go


@job(id="on-order", version="1", on_event="order.placed")
async def on_order(payload: dict[str, Any], io: IO, ctx: Context) -> Any:
    return {"order": payload.get("order")}
