"""`stream=True`: a call's chunks forwarded to a run's stream as they arrive, and the assembled
final response recorded as the task's output (docs/integrations/openai.md, "Streaming").

Chat completions forward each `chat.completion.chunk` (as OpenAI sent it, a dict) and are
assembled by openai-python's own `ChatCompletionStreamState` into the `ChatCompletion` the
same call without `stream=True` returns; `stream_options={"include_usage": True}` is sent
unless given, so the usage is recorded too. The Responses API forwards each event and records
the `Response` its final event (`response.completed`, `.incomplete` or `.failed`) carries.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any

from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from . import codec
from .errors import OpenAIAPIError

Write = Callable[[Any], Awaitable[None]]

# The methods that accept `stream=True`; every other one refuses it.
STREAMABLE = frozenset({"chat.completions.create", "responses.create"})
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's "connection cut" errors: the openai package has shipped on httpx and,
    in newer releases, on httpx2; either may be installed, without the other."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except ImportError:
            continue
    return tuple(found)


_TRANSPORT_ERRORS = _transport_errors()


def prepare(operation: str, payload: dict[str, Any]) -> None:
    """What a streamed request sends besides the caller's params."""
    if operation == "chat.completions.create":
        # The usage comes in a last chunk only when asked for.
        payload.setdefault("stream_options", {"include_usage": True})


async def consume(operation: str, stream: Any, write: Write) -> Any:
    """Forwards every chunk of `stream` through `write`; returns the assembled response."""
    try:
        async with stream:
            if operation == "chat.completions.create":
                return await _chat(stream, write)
            return await _responses(stream, write)
    except _TRANSPORT_ERRORS as exc:
        # The connection was cut mid-stream: the request may be sent again (a new attempt).
        raise OpenAIAPIError(
            f"{operation}: the stream was cut off: {type(exc).__name__}: {exc}",
            retryable=True,
            operation=operation,
        ) from None


async def _chat(stream: Any, write: Write) -> ChatCompletion:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    async for chunk in stream:
        state.handle_chunk(chunk)
        await write(chunk.to_dict())
    final = state.get_final_completion().model_dump(mode="json")
    if not final.get("choices") or any(not c.get("finish_reason") for c in final["choices"]):
        # The connection closed early (a proxy, a lost server): what came is not the answer.
        raise OpenAIAPIError(
            "chat.completions.create: the stream ended before the answer did (no finish_reason)",
            retryable=True,
            operation="chat.completions.create",
        )
    # The parsed views the helper adds (`parsed`, `parsed_arguments`) are not part of a
    # ChatCompletion: the recorded value is what the call without stream=True returns.
    for choice in final.get("choices") or []:
        message = choice.get("message") or {}
        message.pop("parsed", None)
        for call in message.get("tool_calls") or []:
            (call.get("function") or {}).pop("parsed_arguments", None)
    return codec.build(final, ChatCompletion)


async def _responses(stream: Any, write: Write) -> Response:
    final: Response | None = None
    async for event in stream:
        await write(event.to_dict())
        if getattr(event, "type", None) in _FINAL_EVENTS:
            final = event.response
    if final is None:
        raise OpenAIAPIError(
            "responses.create: the stream ended before the response did (no response.completed "
            "event)",
            retryable=True,
            operation="responses.create",
        )
    return final
