"""`OpenAI(limits=...)`: the integration's calls under limits shared by every worker.

Each request takes one place of its limit (engine.ratelimit) before it is sent, with its tokens
estimated: a quarter of the characters of its prompt plus the completion it allows
(`max_tokens`, `max_completion_tokens`, `max_output_tokens`). After the answer, the estimate is
raised by the `usage` it reports when that was more (never lowered: OpenAI counts the estimate
itself), and OpenAI's own view of its limit is taken in: when
`x-ratelimit-remaining-*` reaches 0, nothing more goes until its `x-ratelimit-reset-*`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine import EngineError, RateLimit
from engine.ratelimit import MAX_NAME_LENGTH, Charge

from . import usage
from .errors import parse_duration

Limits = RateLimit | Mapping[str, RateLimit] | None
# A per-model mapping's entry for every model it does not name.
ANY_MODEL = "*"
_COMPLETION_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def check(limits: object) -> Limits:
    if limits is None or isinstance(limits, RateLimit):
        return limits
    if isinstance(limits, Mapping) and all(
        isinstance(k, str) and k and isinstance(v, RateLimit) for k, v in limits.items()
    ):
        return dict(limits)
    raise EngineError(
        f"OpenAI(limits={limits!r}): give an engine.RateLimit, or one per model, "
        "limits={'gpt-4o': RateLimit(requests=500, per='minute'), '*': RateLimit(...)}"
    )


def charge_for(integration_id: str, limits: Limits, params: Mapping[str, Any]) -> Charge | None:
    """What a request with `params` takes, and of which limit; None when it is not limited.

    One `RateLimit` is one limit for every call of the integration; a mapping gives each model
    its own (models it does not name share nothing: each has its own `"*"` limit)."""
    if limits is None:
        return None
    if isinstance(limits, RateLimit):
        limit, name = limits, f"openai:{integration_id}"
    else:
        model = params.get("model")
        model = model if isinstance(model, str) and model else ANY_MODEL
        found = limits.get(model) or limits.get(ANY_MODEL)
        if found is None:
            return None
        limit, name = found, f"openai:{integration_id}:{model}"
    # The row's key holds 300 characters; model names are far shorter.
    return Charge(name[:MAX_NAME_LENGTH], limit, estimate_tokens(params) if limit.tokens else 0)


def estimate_tokens(params: Mapping[str, Any]) -> int:
    """Characters / 4 of the prompt, plus the completion allowed; at least 1."""
    chars = sum(_chars(params.get(k)) for k in ("messages", "input", "prompt", "instructions"))
    return max(1, chars // 4 + _allowed(params))


def _allowed(params: Mapping[str, Any]) -> int:
    """The completion a request allows (`max_tokens` and friends), 0 when it sets none."""
    return next((v for k in _COMPLETION_KEYS if isinstance(v := params.get(k), int) and v > 0), 0)


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, Mapping):
        return sum(_chars(v) for k, v in value.items() if k in ("content", "text", "input"))
    if isinstance(value, list | tuple):
        return sum(_chars(v) for v in value)
    return 0


async def settle(
    charge: Charge, value: Any, headers: Mapping[str, str], params: Mapping[str, Any]
) -> None:
    """After an answer (or a 429): the tokens the call took of OpenAI's limit, and what the
    headers say of that limit.

    OpenAI counts a request against its token limit when it admits it: its prompt plus the
    completion it allows (`max_tokens`). The `usage` of the answer can only show that the
    estimate was short (a prompt longer than a quarter of its characters, a completion with
    no cap): the charge then grows to what was spent. It never shrinks below the estimate: a
    refund would let the fleet send what OpenAI already counted."""
    spent = None
    if value is not None:
        try:
            found = usage.tokens(value)
        except Exception:  # reading usage must never fail a call that succeeded
            found = None
        if found and found["total_tokens"]:
            admitted = (found["prompt_tokens"] or 0) + _allowed(params)
            spent = max(charge.tokens, found["total_tokens"], admitted)
    await charge.settle(
        spent,
        requests_wait=_exhausted_for(headers, "requests"),
        tokens_wait=_exhausted_for(headers, "tokens"),
    )


def _exhausted_for(headers: Mapping[str, str], which: str) -> float:
    """Seconds until OpenAI's `which` limit has room again, if its headers say it has none
    now; else 0."""
    remaining = headers.get(f"x-ratelimit-remaining-{which}")
    reset = headers.get(f"x-ratelimit-reset-{which}")
    if remaining is None or reset is None:
        return 0.0
    try:
        if int(float(remaining)) > 0:
            return 0.0
    except ValueError:
        return 0.0
    return parse_duration(reset) or 0.0
