"""A run suspended by the shared limiter (engine.ratelimit), as the rate-limit tests set it up:
a job whose one call is under a limit of one request an hour, run once (which takes the hour's
place), then triggered again (its run waits, WAITING, for the next place)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from support import Harness, unique_id

from engine import RateLimit, job, rate_limits


@dataclass
class WaitingForAPlace:
    limit: str  # the rate limit's name
    job_id: str
    first: str  # the run that took the hour's place, COMPLETED
    second: str  # the run waiting for the next place, WAITING
    calls: list[str] = field(default_factory=list)  # the run id of each call made


async def a_run_waiting_for_a_place(harness: Harness, prefix: str) -> WaitingForAPlace:
    name = unique_id(f"{prefix}-api")
    rate_limits({name: RateLimit(requests=1, per="hour")})
    calls: list[str] = []

    @job(id=unique_id(prefix))
    async def limited(payload: Any, io: Any, ctx: Any) -> int:
        async def call(task: Any) -> int:
            calls.append(ctx.run_id)
            return int(task.attempt)

        return int(await io.run_task("call", call, rate_limit=name))

    await harness.start(limited)
    engine = harness.engine
    first = await engine.trigger(limited.id, {})
    await engine.wait_for(first, 60)
    second = await engine.trigger(limited.id, {})

    deadline = time.monotonic() + 60
    while (await engine.get_run(second))["status"] != "WAITING":
        assert time.monotonic() < deadline, "timed out after 60s waiting for the run to wait"
        await asyncio.sleep(0.02)
    return WaitingForAPlace(name, limited.id, first, second, calls)
