"""Errors the fake answers with, injected faults and the record of one received request."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

REDACTED = "REDACTED"
SENSITIVE_HEADERS = frozenset({"authorization", "api-key", "openai-api-key"})


class FakeError(Exception):
    """An error the fake answers with an OpenAI-shaped body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or error_type(status)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def not_found(kind: str, object_id: str) -> FakeError:
    return FakeError(404, f"No {kind} found with id '{object_id}'.", code="not_found")


@dataclass
class RecordedRequest:
    """One request as the fake received it (admin ``/_fake/*`` requests are not recorded)."""

    method: str
    path: str
    route: str
    idempotency_key: str | None
    headers: dict[str, str]
    json: Any
    query: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "idempotency_key": self.idempotency_key,
            "query": self.query,
            "json": self.json,
            "at": self.at,
        }


@dataclass
class Fault:
    route: str
    status: int
    times: int = 1
    retry_after: float | None = None
    message: str = "Injected fault"
    reset_requests: str | None = None
    code: str | None = None
    type: str | None = None

    def matches(self, route: str) -> bool:
        return self.route == "*" or route_matches(self.route, route)

    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.retry_after is not None:
            out["retry-after"] = _fmt_seconds(self.retry_after)
        if self.reset_requests is not None:
            out["x-ratelimit-reset-requests"] = self.reset_requests
        elif self.status == 429 and self.retry_after is not None:
            out["x-ratelimit-reset-requests"] = f"{_fmt_seconds(self.retry_after)}s"
        return out

    def error(self) -> FakeError:
        code = self.code or ("rate_limit_exceeded" if self.status == 429 else None)
        return FakeError(self.status, self.message, code=code, type=self.type)


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def redact(headers: dict[str, str]) -> dict[str, str]:
    """The headers with credentials replaced by ``REDACTED``."""
    return {k: (REDACTED if k.lower() in SENSITIVE_HEADERS else v) for k, v in headers.items()}


def route_matches(pattern: str, route: str) -> bool:
    """``"POST /v1/assistants"`` matches exactly; a bare path matches any method."""
    if " " in pattern:
        return pattern == route
    return route.split(" ", 1)[-1] == pattern
