"""Jobs for the flow-control tests (concurrency limits, priority, why a run waits).

Each limited job's step records, under an fcntl lock, how many of its runs are inside the step at
once and the highest number seen (per group), then holds until a gate file exists: the test opens
the gate once it has seen what it wants, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from typing import Any

from engine import Concurrency, job


def _update(path: str, group: str, delta: int) -> None:
    """Adds `delta` to `group`'s count of runs inside the step and keeps its high-water mark."""
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        state = json.loads(text) if text else {}
        now = state.get(f"{group}:now", 0) + delta
        state[f"{group}:now"] = now
        state[f"{group}:max"] = max(state.get(f"{group}:max", 0), now)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(state))
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


async def _held(payload: dict[str, Any], group: str) -> None:
    _update(payload["record"], group, +1)
    try:
        while True:
            if _exists(payload["gate"]):
                break
            await asyncio.sleep(0.02)
    finally:
        _update(payload["record"], group, -1)


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@job(id="limited", version="1", concurrency=2)
async def limited(payload: dict[str, Any], io: Any, ctx: Any) -> str:
    async def step(task: Any) -> str:
        await _held(payload, "all")
        return str(ctx.run_id)

    return str(await io.run_task("step", step))


@job(
    id="per-customer",
    version="1",
    concurrency=Concurrency(limit=1, key=lambda payload: payload["customer_id"]),
)
async def per_customer(payload: dict[str, Any], io: Any, ctx: Any) -> str:
    async def step(task: Any) -> str:
        await _held(payload, str(payload["customer_id"]))
        return str(payload["customer_id"])

    return str(await io.run_task("step", step))


@job(id="by-field", version="1", concurrency=Concurrency(limit=1, key="customer.id"))
async def by_field(payload: dict[str, Any], io: Any, ctx: Any) -> str:
    return "ok"


@job(id="one-at-a-time", version="1", concurrency=1)
async def one_at_a_time(payload: dict[str, Any], io: Any, ctx: Any) -> Any:
    """With `poll`, suspends on a background poll (WAITING, holding no slot) until it answers."""
    if payload.get("poll"):
        return await io.background_poll("poll", payload["poll"], interval=0.2, timeout=120)
    return "quick"


@job(id="ordered", version="1", priority=1)
async def ordered(payload: dict[str, Any], io: Any, ctx: Any) -> str:
    async def step(task: Any) -> str:
        _append(payload["log"], payload["name"])
        return str(payload["name"])

    return str(await io.run_task("step", step))
