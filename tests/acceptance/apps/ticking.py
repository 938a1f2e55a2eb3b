"""A job for the three-worker schedule test: a yearly schedule that catches up every missed
tick (the test makes its ticks due). Its one step appends the tick, `ctx.scheduled_at` and the
worker's pid to the file named by $TICKING_LOG."""

from __future__ import annotations

import os
from typing import Any

from engine import Schedule, job


@job(id="ticking", version="1", schedule=[Schedule("0 0 1 1 *", missed="all")])
async def ticking(payload: dict[str, Any], io: Any, ctx: Any) -> int:
    async def effect(task: Any) -> int:
        line = f"{payload['scheduled_at']} {ctx.scheduled_at.isoformat(timespec='microseconds')}"
        fd = os.open(os.environ["TICKING_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line} {os.getpid()}\n".encode())
        finally:
            os.close(fd)
        return os.getpid()

    pid: int = await io.run_task("effect", effect)
    return pid
