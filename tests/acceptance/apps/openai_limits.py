"""A job that makes one chat call (for the rate-limit kill -9 test and the usage report)."""

from __future__ import annotations

from typing import Any

from engine import IO, Context, job
from integrations.openai import OpenAI

openai = OpenAI(id="openai")


@job(id="oa-chat", integrations={"openai": openai})
async def chat(payload: dict[str, Any], io: IO, ctx: Context) -> Any:
    done = await io.openai.chat.completions.create(
        "chat", model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    return done.choices[0].message.content
