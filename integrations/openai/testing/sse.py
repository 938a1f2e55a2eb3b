"""`stream: true` as OpenAI serves it: server-sent events built from the finished answer.

A chat completion becomes `chat.completion.chunk`s: the role, one chunk per word of the reply,
the finish reason, then (with `stream_options.include_usage`) a last chunk with the usage and no
choices, then `data: [DONE]`. A response becomes the Responses API's typed events, from
`response.created` to `response.completed` (or `.incomplete`/`.failed`), each with an
`event:` line and a `sequence_number`.

`hold_at` is where a held stream (`fake.hold("streams")`) stops until it is released: after
the first half of the reply's words, so a test reads chunks while the call is in progress.
"""

from __future__ import annotations

import copy
import re
from typing import Any

Event = tuple[str | None, Any]  # (event name or None, data: a JSON object or "[DONE]")


def words(text: str) -> list[str]:
    """`text` in pieces that join back to it: each word with the space before it."""
    return re.findall(r"\s*\S+", text) or [text]


def chat_events(completion: dict[str, Any], include_usage: bool) -> tuple[list[Event], int]:
    """The chunks of `completion` and where a held stream stops (an index into them)."""
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "system_fingerprint": completion.get("system_fingerprint"),
    }
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> Event:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return None, {**base, "choices": [choice]}

    events: list[Event] = []
    hold_at = 1
    for choice in completion["choices"]:
        i, message = choice["index"], choice["message"]
        events.append(chunk(i, {"role": "assistant", "content": "", "refusal": None}))
        pieces = words(message.get("content") or "")
        for n, piece in enumerate(pieces):
            events.append(chunk(i, {"content": piece}))
            if i == 0 and n + 1 == (len(pieces) + 1) // 2:
                hold_at = len(events)
        events.append(chunk(i, {}, choice["finish_reason"]))
    if include_usage:
        events.append((None, {**base, "choices": [], "usage": completion["usage"]}))
    events.append((None, "[DONE]"))
    return events, hold_at


def response_events(response: dict[str, Any]) -> tuple[list[Event], int]:
    """The Responses API's events for a finished `response`, and where a held stream stops."""
    events: list[Event] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **fields}))

    started = {**copy.deepcopy(response), "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=started)
    emit("response.in_progress", response=started)
    hold_at = len(events)
    for index, item in enumerate(response.get("output") or []):
        emit(
            "response.output_item.added",
            output_index=index,
            item={**item, "status": "in_progress", "content": []},
        )
        for part_index, part in enumerate(item.get("content") or []):
            where = {"item_id": item["id"], "output_index": index, "content_index": part_index}
            emit("response.content_part.added", **where, part={**part, "text": ""})
            pieces = words(part.get("text") or "")
            for n, piece in enumerate(pieces):
                emit("response.output_text.delta", **where, delta=piece, logprobs=[])
                if index == 0 and part_index == 0 and n + 1 == (len(pieces) + 1) // 2:
                    hold_at = len(events)
            emit("response.output_text.done", **where, text=part.get("text") or "", logprobs=[])
            emit("response.content_part.done", **where, part=part)
        emit("response.output_item.done", output_index=index, item=item)
    final = {
        "completed": "response.completed",
        "incomplete": "response.incomplete",
        "failed": "response.failed",
    }.get(response.get("status") or "", "response.completed")
    emit(final, response=response)
    return events, hold_at
