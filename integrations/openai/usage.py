"""What an OpenAI call spent: the model and its tokens, and the rate-limit headers it came with.

Recorded by the engine with the task's outcome (engine_task_usage): the request's usage through
`io.call(usage=...)`, a finished run's or background response's through its poll. Only calls
that are billed carry tokens (creates, and the waits that see a run or response finish); a
retrieve or a list records its rate-limit headers with no model and no tokens, so that reading
a run twice never counts its tokens twice.

The headers come from an httpx response hook on the client (`capture_headers`; its request
hook, `recheck_place`, is the limiter's last look before a request leaves): the
openai-python models do not keep them, and `with_raw_response` would bring back the Assistants
API's DeprecationWarning at every await.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from engine import ratelimit

PROVIDER = "openai"
# Calls OpenAI bills by the tokens in their answer's `usage` (the waits are billed through
# their polls: engine.pollers.PollResult.usage).
BILLED = frozenset(
    {
        "chat.completions.create",
        "embeddings.create",
        "responses.create",
        "beta.threads.create_and_run",
        "beta.threads.runs.create",
        "images.generate",
        "images.edit",
        "images.create_variation",
    }
)

_headers: ContextVar[dict[str, str] | None] = ContextVar("openai_ratelimit_headers", default=None)


async def capture_headers(response: Any) -> None:
    """httpx response hook: keeps the `x-ratelimit-*` headers for the call being made."""
    box = _headers.get()
    if box is not None:
        box.clear()
        box.update(
            {
                k.lower(): v
                for k, v in response.headers.items()
                if k.lower().startswith("x-ratelimit-")
            }
        )


@contextlib.contextmanager
def capturing() -> Iterator[dict[str, str]]:
    """The rate-limit headers of the requests made inside (the last one's)."""
    box: dict[str, str] = {}
    token = _headers.set(box)
    try:
        yield box
    finally:
        _headers.reset(token)


async def recheck_place(request: Any) -> None:
    """httpx request hook: a rate-limited request that stalled after its place was granted
    takes a new one rather than go late (engine.ratelimit.recheck)."""
    await ratelimit.recheck()


def hooks() -> dict[str, list[Any]]:
    """The event hooks of the httpx clients the integration creates."""
    return {"request": [recheck_place], "response": [capture_headers]}


def install(http_client: Any) -> None:
    """Adds the hooks to an httpx client (once)."""
    found = getattr(http_client, "event_hooks", None)
    if isinstance(found, dict):
        merged = {kind: list(found.get(kind, [])) for kind in ("request", "response")}
        for kind, added in hooks().items():
            merged[kind] += [hook for hook in added if hook not in merged[kind]]
        http_client.event_hooks = {**found, **merged}


def _get(obj: Any, *path: str) -> Any:
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
    return obj


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def tokens(value: Any) -> dict[str, Any] | None:
    """Model and tokens of an OpenAI object (a model or its JSON) that has `usage`, else None.

    Chat completions, embeddings and runs say prompt/completion tokens; the Responses API says
    input/output tokens: both come out as prompt/completion."""
    usage = _get(value, "usage")
    if usage is None:
        return None
    prompt = _int(_get(usage, "prompt_tokens")) or _int(_get(usage, "input_tokens"))
    completion = _int(_get(usage, "completion_tokens")) or _int(_get(usage, "output_tokens"))
    cached = _int(_get(usage, "prompt_tokens_details", "cached_tokens")) or _int(
        _get(usage, "input_tokens_details", "cached_tokens")
    )
    reasoning = _int(_get(usage, "completion_tokens_details", "reasoning_tokens")) or _int(
        _get(usage, "output_tokens_details", "reasoning_tokens")
    )
    model = _get(value, "model")
    return {
        "provider": PROVIDER,
        "model": model if isinstance(model, str) else None,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached,
        "reasoning_tokens": reasoning,
        "total_tokens": _int(_get(usage, "total_tokens")) or prompt + completion,
    }


def of_call(
    operation: str, value: Any, headers: dict[str, str], params: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """What a finished call records: tokens if it is billed, the images it made (`params`:
    what was sent), and its rate-limit headers."""
    try:
        found = tokens(value) if operation in BILLED else None
        if operation in IMAGES:
            found = {"provider": PROVIDER, **(found or {}), **images(value, params or {})}
    except Exception:  # reading usage must never fail a call that succeeded
        found = None
    if found is None and not headers:
        return None
    row = found or {"provider": PROVIDER, "model": None}
    return {**row, "rate_limits": dict(headers) or None}


# Calls OpenAI bills per image, by size and quality (gpt-image-1 by the tokens it reports).
IMAGES = frozenset({"images.generate", "images.edit", "images.create_variation"})


def images(value: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The images a call made, and at what size and quality: what was asked, else OpenAI's
    defaults (dall-e-2, 1024x1024, standard). The answer does not name its model."""
    data = _get(value, "data")
    model = params.get("model") or _get(value, "model") or "dall-e-2"
    return {
        "model": str(model),
        "images": len(data) if isinstance(data, list) else 0,
        "image_size": str(params.get("size") or _get(value, "size") or "1024x1024"),
        "image_quality": str(params.get("quality") or _get(value, "quality") or "standard"),
    }
