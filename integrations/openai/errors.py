"""Errors of the OpenAI integration, and how an openai-python exception becomes one.

An API failure is recorded on its task as an `OpenAIAPIError` carrying the HTTP status, OpenAI's
error `type`/`code`/`param` and the request id (as `error_type`, `code`, `param`, `request_id`:
`type` is taken by the engine for the exception class). Whether the engine retries it comes from
`retryable`, and how long it waits first from `retry_after`, read off the response headers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import openai

from engine import EngineError

from .secrets import scrub

# What the openai client itself retries: timeouts, lock conflicts, rate limits, server errors.
RETRYABLE_STATUSES = frozenset({408, 409, 429})
# Errors no retry can fix, whatever their status (a spent quota comes as a 429), and what to do.
FINAL_CODES = {
    "insufficient_quota": "the account's quota is spent: add credits or raise the budget at "
    "https://platform.openai.com/settings/organization/billing, then `engine runs retry` the run",
    "billing_hard_limit_reached": "the account reached its billing hard limit: raise it at "
    "https://platform.openai.com/settings/organization/limits",
    "billing_not_active": "billing is not active for this account: set it up at "
    "https://platform.openai.com/settings/organization/billing",
    "invalid_api_key": "the API key was refused: check OPENAI_API_KEY or OpenAI(api_key=...)",
    "account_deactivated": "the OpenAI account is deactivated",
    "access_terminated": "the OpenAI account's access is terminated",
    "unsupported_country_region_territory": "OpenAI does not serve the worker's region",
}
STATUS_HINTS = {
    400: "the request is invalid: fix the parameters",
    401: "the API key was refused: check OPENAI_API_KEY or OpenAI(api_key=...)",
    403: "the key's project may not use this model or endpoint",
    404: "no such object or model: check the id and the key's project",
    422: "the request is invalid: fix the parameters",
}


class OpenAIAPIError(EngineError):
    """An OpenAI API call failed."""

    retryable: bool = True
    retry_after: float | None = None
    status_code: int | None = None
    error_type: str | None = None
    code: str | None = None
    param: str | None = None
    request_id: str | None = None
    # A rate limit (429) waits for the reset OpenAI gives, up to this bound, and has attempts of
    # its own beyond the policy's max_attempts (engine.RetryPolicy reads both).
    max_retry_after: float | None = None
    extra_attempts: int = 0

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        **details: Any,
    ) -> None:
        details = {k: v for k, v in details.items() if v is not None}
        super().__init__(message, **details)
        self.retryable = retryable
        self.retry_after = retry_after
        for attr, value in details.items():
            setattr(self, attr, value)


class MissingAPIKeyError(OpenAIAPIError):
    """No OpenAI API key: pass OpenAI(api_key=...) or set OPENAI_API_KEY in the worker."""

    def __init__(self, integration_id: str) -> None:
        super().__init__(
            f"OpenAI(id={integration_id!r}) has no API key: pass OpenAI(api_key=...) or set "
            "OPENAI_API_KEY in the worker's environment",
            retryable=False,
        )


def is_retryable_status(status: int, headers: Mapping[str, str] | None = None) -> bool:
    should = (headers or {}).get("x-should-retry", "").lower()
    if should in ("true", "false"):
        return should == "true"
    return status in RETRYABLE_STATUSES or status >= 500


def translate(exc: openai.OpenAIError, operation: str, secret: str | None) -> OpenAIAPIError:
    """The integration's error for what the openai client raised (secrets scrubbed)."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        headers = {k.lower(): v for k, v in exc.response.headers.items()}
        message = str(body.get("message") or exc.message)
        error_type = body.get("type") if isinstance(body.get("type"), str) else None
        status = exc.status_code
        code = _scalar(body.get("code"))
        final = FINAL_CODES.get(code or "") or FINAL_CODES.get(error_type or "")
        retryable = final is None and is_retryable_status(status, headers)
        what = f"{status} ({error_type})" if error_type else str(status)
        hint = final or (None if retryable else STATUS_HINTS.get(status))
        text = f"{operation}: OpenAI answered {what}: {message}"
        if hint:
            text += f" -- no retry can fix this: {hint}"
        return OpenAIAPIError(
            scrub(text, secret),
            retryable=retryable,
            retry_after=retry_after_from(headers, message) if retryable else None,
            status_code=status,
            error_type=error_type,
            code=code,
            param=_scalar(body.get("param")),
            request_id=exc.request_id,
            operation=operation,
        )
    if isinstance(exc, openai.APIConnectionError):  # APITimeoutError included
        kind = "timed out" if isinstance(exc, openai.APITimeoutError) else "could not connect"
        return OpenAIAPIError(
            scrub(f"{operation}: the request to OpenAI {kind}: {exc}", secret),
            retryable=True,
            operation=operation,
        )
    return OpenAIAPIError(
        scrub(f"{operation}: {type(exc).__name__}: {exc}", secret),
        retryable=False,
        operation=operation,
    )


def _scalar(value: Any) -> str | None:
    return None if value is None else str(value)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float | None:
    """Seconds in an `x-ratelimit-reset-*` value ("1s", "6m0s", "20ms", "1h2m3.5s", "0.5")."""
    text = text.strip()
    try:
        return max(float(text), 0.0)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text.replace(" ", ""):
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def parse_retry_after(value: str, now: float | None = None) -> float | None:
    """Seconds in a `retry-after` value: a number of seconds or an HTTP date."""
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


def retry_after_from(headers: Mapping[str, str], message: str = "") -> float | None:
    """How long the response asks us to wait: `retry-after-ms`, `retry-after`, then the
    `x-ratelimit-reset-*` header of the limit the message names (the later one if it names
    neither). None when the response says nothing."""
    if "retry-after-ms" in headers:
        try:
            return max(float(headers["retry-after-ms"]) / 1000.0, 0.0)
        except ValueError:
            pass
    if "retry-after" in headers:
        found = parse_retry_after(headers["retry-after"])
        if found is not None:
            return found
    resets = {
        which: parse_duration(headers[f"x-ratelimit-reset-{which}"])
        for which in ("requests", "tokens")
        if f"x-ratelimit-reset-{which}" in headers
    }
    known = {k: v for k, v in resets.items() if v is not None}
    if not known:
        return None
    lowered = message.lower()
    for which in ("tokens", "requests"):
        if which in known and f"for {which}" in lowered:
            return known[which]
    return max(known.values())
