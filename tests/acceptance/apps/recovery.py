"""A job whose step hangs until a file appears: its workers can be killed in it again and again."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from engine import job


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _note(path: str, line: str) -> None:
    with open(path, "a") as log:
        log.write(f"{line}\n")


@job(id="fragile", version="1")
async def fragile(payload: dict[str, Any], io: Any, ctx: Any) -> dict[str, Any]:
    async def hang(task: Any) -> str:
        _note(payload["log"], f"hang-start {ctx.attempt}")
        while True:
            if _exists(payload["release"]):
                return "released"
            await asyncio.sleep(0.05)

    step = await io.run_task("hang", hang)
    return {"step": step, "attempt": ctx.attempt}
