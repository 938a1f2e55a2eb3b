"""Jobs for the many-workers test: each task appends "<run id> <key> <worker pid>" to a file."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from engine import job

TASKS = 5


def append(path: str, line: str) -> None:
    """One O_APPEND write per line: lines from concurrent workers never interleave."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


async def five_steps(payload: dict[str, Any], io: Any, ctx: Any) -> list[int]:
    pids = []
    for i in range(TASKS):
        key = f"k{i}"

        async def effect(task: Any, key: str = key) -> int:
            append(payload["log"], f"{ctx.run_id} {key} {os.getpid()} {ctx.attempt}")
            if payload.get("sleep"):
                await asyncio.sleep(payload["sleep"])
            return os.getpid()

        pids.append(await io.run_task(key, effect))
    return pids


job(id="five", version="1")(five_steps)
