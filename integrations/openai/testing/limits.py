"""The fake's account: requests- and tokens-per-minute limits, quota and usage, as OpenAI has them.

OpenAI's limits refill continuously (a token bucket holding one minute's worth), and every
answer says where the caller stands: ``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and
``x-ratelimit-reset-*`` (time until the bucket is full again, as ``"6m0s"``, ``"1.5s"``,
``"20ms"``). A request that finds the bucket short is refused with 429, ``retry-after`` and a
message naming the limit, and takes nothing from it. Without a configured limit nothing is
enforced and the headers report a nominal one.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from .faults import FakeError

NOMINAL_REQUESTS = 10_000
NOMINAL_TOKENS = 10_000_000
# Routes whose requests spend tokens (and whose answers carry `usage`).
TOKEN_ROUTES = frozenset(
    {
        "POST /v1/chat/completions",
        "POST /v1/embeddings",
        "POST /v1/responses",
        "POST /v1/threads/runs",
        "POST /v1/threads/{thread_id}/runs",
    }
)
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. "
    "For more information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)


def format_duration(seconds: float) -> str:
    """As OpenAI writes resets: "6m0s", "1.5s", "20ms", "0s"."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, math.ceil(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60)
    secs = f"{rest:.3f}".rstrip("0").rstrip(".")
    return f"{int(minutes)}m{secs}s" if minutes else f"{secs}s"


class Bucket:
    """`limit` per minute, refilled continuously; `limit=None` is unlimited (nominal headers).

    The bucket holds a minute's worth, or `burst_seconds`' worth: OpenAI says it may enforce a
    limit over shorter periods ("60,000 requests/minute may be enforced as 1,000 requests/
    second"), so that a client bunching its requests is refused though it keeps to the minute."""

    def __init__(self, limit: int | None, nominal: int, burst_seconds: float | None = None) -> None:
        self.limit = limit
        self.rate = float(limit if limit is not None else nominal) / 60.0
        seconds = 60.0 if limit is None or burst_seconds is None else burst_seconds
        self.capacity = self.rate * seconds
        self.level = self.capacity
        self.at = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def shortfall(self, cost: float, now: float) -> float:
        """Seconds until `cost` fits (0 when it fits now)."""
        self._refill(now)
        if self.limit is None or cost <= self.level:
            return 0.0
        if cost > self.capacity:  # never fits: OpenAI refuses it with a full minute's wait
            return 60.0
        return (cost - self.level) / self.rate

    def take(self, cost: float) -> None:
        if self.limit is not None:
            self.level -= cost

    def headers(self, which: str) -> dict[str, str]:
        reset = (self.capacity - self.level) / self.rate
        return {
            f"x-ratelimit-limit-{which}": str(int(self.rate * 60.0)),
            f"x-ratelimit-remaining-{which}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{which}": format_duration(reset),
        }


@dataclass
class Usage:
    """Tokens the fake reports instead of its own counts (None: count as usual)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0
    reasoning_tokens: int = 0


class Account:
    """Limits, quota, usage overrides and the concurrency high-water mark; thread-safe."""

    def __init__(
        self, requests_per_minute: int | None = None, tokens_per_minute: int | None = None
    ) -> None:
        self._lock = threading.Lock()
        self.set_limits(requests_per_minute, tokens_per_minute)
        self.quota_exhausted = False
        self.usage = Usage()
        self.in_flight = 0
        self.max_concurrent = 0
        self.rate_limited = 0

    def set_limits(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        burst_seconds: float | None = None,
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise FakeError(400, f"{name} must be a positive integer or null, not {value!r}")
        if burst_seconds is not None and (
            isinstance(burst_seconds, bool)
            or not isinstance(burst_seconds, int | float)
            or not 0 < burst_seconds <= 60
        ):
            raise FakeError(
                400, f"burst_seconds must be over 0 and at most 60, not {burst_seconds!r}"
            )
        with self._lock:
            self.burst_seconds = burst_seconds
            self.requests = Bucket(requests_per_minute, NOMINAL_REQUESTS, burst_seconds)
            self.tokens = Bucket(tokens_per_minute, NOMINAL_TOKENS, burst_seconds)

    def reset(self) -> None:
        with self._lock:
            self.requests = Bucket(self.requests.limit, NOMINAL_REQUESTS, self.burst_seconds)
            self.tokens = Bucket(self.tokens.limit, NOMINAL_TOKENS, self.burst_seconds)
            self.quota_exhausted = False
            self.usage = Usage()
            self.max_concurrent = self.in_flight
            self.rate_limited = 0

    # -- concurrency ---------------------------------------------------------------------------
    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_concurrent = max(self.max_concurrent, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    # -- admission -----------------------------------------------------------------------------
    def admit(self, route: str, body: Any) -> tuple[FakeError | None, dict[str, str]]:
        """Spends one request and the request's tokens, or refuses it (429) taking nothing.

        Returns the error to answer with (None: go on) and the rate-limit headers."""
        cost = estimate_tokens(body) if route in TOKEN_ROUTES else 0
        with self._lock:
            if self.quota_exhausted:
                error: FakeError | None = FakeError(
                    429, QUOTA_MESSAGE, code="insufficient_quota", type="insufficient_quota"
                )
                return error, self._headers()
            now = time.monotonic()
            wait_requests = self.requests.shortfall(1, now)
            wait_tokens = self.tokens.shortfall(cost, now)
            if wait_requests or wait_tokens:
                self.rate_limited += 1
                which = "tokens" if wait_tokens >= wait_requests else "requests"
                bucket = self.tokens if which == "tokens" else self.requests
                wait = max(wait_requests, wait_tokens)
                error = FakeError(
                    429,
                    f"Rate limit reached for fake-model in organization org-fake on {which} "
                    f"per min (RPM/TPM): Limit {bucket.limit}, Used "
                    f"{int(bucket.capacity - bucket.level)}, Requested "
                    f"{1 if which == 'requests' else cost}. Please try again in "
                    f"{format_duration(wait)}.",
                    code="rate_limit_exceeded",
                )
                headers = self._headers()
                headers["retry-after"] = str(max(1, math.ceil(wait)))
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
                return error, headers
            self.requests.take(1)
            self.tokens.take(cost)
            return None, self._headers()

    def _headers(self) -> dict[str, str]:
        return {**self.requests.headers("requests"), **self.tokens.headers("tokens")}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "max_concurrent": self.max_concurrent,
                "in_flight": self.in_flight,
                "rate_limited": self.rate_limited,
                "quota_exhausted": self.quota_exhausted,
                "requests_per_minute": self.requests.limit,
                "tokens_per_minute": self.tokens.limit,
                "burst_seconds": self.burst_seconds,
            }


_WORD = re.compile(r"\S+")


def words(value: Any) -> int:
    """The fake's token count: whitespace-separated words of every string in `value`."""
    if isinstance(value, str):
        return len(_WORD.findall(value))
    if isinstance(value, dict):
        return sum(words(v) for k, v in value.items() if k in ("content", "text", "input"))
    if isinstance(value, list):
        return sum(words(v) for v in value)
    return 0


def estimate_tokens(body: Any) -> int:
    """What a request is charged before it runs, as OpenAI does: its prompt's tokens plus the
    completion it allows (`max_tokens` and friends), at least 1."""
    if not isinstance(body, dict):
        return 1
    prompt = words(body.get("messages")) + words(body.get("input"))
    prompt += words((body.get("thread") or {}).get("messages"))
    allowed = next(
        (
            body[k]
            for k in ("max_completion_tokens", "max_tokens", "max_output_tokens")
            if isinstance(body.get(k), int)
        ),
        0,
    )
    return max(1, prompt + allowed)
