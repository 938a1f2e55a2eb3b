"""A job that streams a chat completion, then waits on a gate (for the kill -9 tests)."""

from __future__ import annotations

from typing import Any

from engine import Context, job
from integrations.openai import OpenAI

openai = OpenAI(id="openai")


@job(id="stream-chat", integrations={"openai": openai})
async def stream_chat(payload: dict[str, Any], io: Any, ctx: Context) -> dict[str, Any]:
    answer = await io.openai.chat.completions.create(
        "answer",
        model="gpt-4o",
        messages=[{"role": "user", "content": payload["prompt"]}],
        stream=True,
    )
    # Held by the test until it has killed the worker that made the call.
    await io.background_poll("gate", payload["gate"], interval=0.2)
    return {"id": answer.id, "text": answer.choices[0].message.content}
