"""The job `bench/soak.py` runs under faults: several steps, a durable wait, maybe one poison.

Every execution of a step function appends one line to `$SOAK_EXEC_LOG` (its run, key, start
time, pid) after asking the database, directly (`$SOAK_CHECK_DSN`, not through the soak's
proxy), whether that task is already COMPLETED: a step that starts although its task is
completed is exactly what the engine promises never happens. The soak also compares the start
times with `engine_tasks.completed_at` afterwards, for the executions that could not ask (the
database was down).

A poisoned step returns a value the database may refuse (NaN, NUL, 2**70, a lone surrogate).
The engine must either refuse it with one clear error (the run ends FAILED and the step ran
once) or store it exactly: then the job checks that the value it got back is the one returned.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from engine import job

POISONS: dict[str, Any] = {
    "nan": float("nan"),
    "nul": "a\u0000b",
    "bigint": 2**70,
    "surrogate": "x\ud800y",
}


def same(got: Any, sent: Any) -> bool:
    """Whether a poisoned value came back exactly (NaN is never equal to itself)."""
    if isinstance(sent, float) and math.isnan(sent):
        return isinstance(got, float) and math.isnan(got)
    return type(got) is type(sent) and got == sent


async def _completed_already(run_id: str, key: str) -> str:
    """The task's status in the database right now, "" if absent, "?" if the check failed."""
    dsn = os.environ.get("SOAK_CHECK_DSN")
    if not dsn:
        return "?"
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except Exception:
        return "?"
    try:
        row = await asyncio.wait_for(
            conn.fetchrow(
                "SELECT status FROM engine_tasks WHERE run_id = $1 AND key = $2",
                run_id,
                key,
            ),
            2,
        )
        return "" if row is None else str(row["status"])
    except Exception:
        return "?"
    finally:
        try:
            await asyncio.wait_for(conn.close(), 2)
        except Exception:
            conn.terminate()


def _log_execution(run_id: str, key: str, started: float, seen: str) -> None:
    path = os.environ.get("SOAK_EXEC_LOG")
    if not path:
        return
    line = json.dumps({"run": run_id, "key": key, "t": started, "seen": seen, "pid": os.getpid()})
    # One short write on an O_APPEND file: lines from several workers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def step(run_id: str, key: str, value: Any, delay: float) -> Callable[[Any], Awaitable[Any]]:
    async def fn(task: Any) -> Any:
        started = time.time()
        seen = await _completed_already(run_id, key)
        _log_execution(run_id, key, started, seen)
        await asyncio.sleep(delay)  # widens the window in which a fault can hit a step
        return value

    fn.__name__ = "step"
    return fn


@job(id="soak", version="1")
async def soak(payload: dict[str, Any], io: Any, ctx: Any) -> dict[str, Any]:
    total = 0
    delays = payload["delays"]
    for i in range(len(delays)):
        if i == payload["wait_at"]:
            await io.wait("nap", payload["wait"])
        key = f"step-{i}"
        poisoned = payload.get("poison") if i == payload.get("poison_at") else None
        value = POISONS[poisoned] if poisoned else i + 1
        got = await io.run_task(key, step(ctx.run_id, key, value, delays[i]))
        if poisoned:
            if not same(got, value):
                raise RuntimeError(f"soak: poisoned value {poisoned} came back as {got!r}")
        else:
            total += got
    return {"total": total}
