"""Jobs under shared rate limits (engine.ratelimit), for the rate-limit acceptance tests.

Each generic step appends the time it ran (and its run and step) to the file the payload names,
with O_APPEND so that the workers' lines never mix: the test reads every call's time from it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from engine import IO, Context, RateLimit, job, rate_limits
from integrations.openai import OpenAI

rate_limits(
    {
        "crm-api": RateLimit(requests=int(os.environ.get("RL_CRM_PER_SECOND", "5")), per="second"),
        # One call an hour: every call after the first waits, suspended, for a long time.
        "slow-api": RateLimit(requests=1, per="hour"),
    }
)

openai = OpenAI(
    id="openai",
    limits=RateLimit(requests=int(os.environ.get("RL_OPENAI_RPM", "60")), per="minute"),
)
# A token limit only: each call's estimate (15 characters / 4 + max_tokens = 53) is short of
# what the fake counts (8 words + max_tokens = 58) until the answer's usage corrects it.
openai_tokens = OpenAI(
    id="openai-tokens",
    limits=RateLimit(tokens=int(os.environ.get("RL_OPENAI_TPM", "12000")), per="minute"),
)


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


@job(id="crm", version="1")
async def crm(payload: dict[str, Any], io: IO, ctx: Context) -> int:
    for i in range(int(payload.get("calls", 1))):

        async def call(task: Any, i: int = i) -> int:
            _append(payload["log"], f"{time.time():.6f} {ctx.run_id} {i} {task.attempt}")
            return i

        await io.run_task(f"call-{i}", call, rate_limit=str(payload.get("limit", "crm-api")))
    return int(payload.get("calls", 1))


@job(id="oa-limited", version="1", integrations={"openai": openai})
async def oa_limited(payload: dict[str, Any], io: IO, ctx: Context) -> int:
    for i in range(int(payload.get("calls", 1))):
        await io.openai.chat.completions.create(
            f"chat-{i}", model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
        )
    return int(payload.get("calls", 1))


@job(id="oa-tokens", version="1", integrations={"openai": openai_tokens})
async def oa_tokens(payload: dict[str, Any], io: IO, ctx: Context) -> int:
    for i in range(int(payload.get("calls", 1))):
        await io.openai.chat.completions.create(
            f"chat-{i}",
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "a b c d e f g h"}],
            max_tokens=50,
        )
    return int(payload.get("calls", 1))
