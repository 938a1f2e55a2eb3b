"""Jobs for the schedule and delay tests: a yearly schedule (it never fires by itself during a
test; the test makes its tick due), and a job to delay. Each step appends a line to the file
named by $SCHEDULED_LOG."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

from engine import Schedule, job


def append(line: str) -> None:
    fd = os.open(os.environ["SCHEDULED_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


async def steps(io: Any, prefix: str, n: int) -> int:
    for i in range(n):

        async def step(task: Any, key: str = f"{prefix}{i:02d}") -> str:
            append(key)
            await asyncio.sleep(0.05)
            return key

        await io.run_task(f"{prefix}{i:02d}", step)
    return n


@job(
    id="yearly",
    version="1",
    schedule=["0 0 1 1 *", Schedule("0 0 1 7 *", timezone="Europe/Paris")],
    timeout=timedelta(hours=1),
)
async def yearly(payload: dict[str, Any], io: Any, ctx: Any) -> dict[str, Any]:
    return {"scheduled_at": payload["scheduled_at"], "steps": await steps(io, "y", 20)}


@job(id="later", version="1")
async def later(payload: dict[str, Any], io: Any, ctx: Any) -> int:
    return await steps(io, "l", 3)
