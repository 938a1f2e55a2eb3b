"""The app the rate-limit benchmark's `engine run` workers load (bench/bench_ratelimit.py).

`BENCH_RPM` is the limit (requests per minute) shared by every worker; `BENCH_CALLS` the chat
calls each run makes. The fake OpenAI server is at OPENAI_BASE_URL.
"""

from __future__ import annotations

import os
from typing import Any

from engine import RateLimit, job
from integrations.openai import OpenAI

openai = OpenAI(id="openai", limits=RateLimit(requests=int(os.environ["BENCH_RPM"]), per="minute"))


@job(id="bench-rate-limited", version="1", integrations={"openai": openai})
async def rate_limited(payload: Any, io: Any, ctx: Any) -> int:
    calls = int(os.environ.get("BENCH_CALLS", "5"))
    for i in range(calls):
        await io.openai.chat.completions.create(
            f"chat-{i}",
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"Say {i} back to me."}],
        )
    return calls
