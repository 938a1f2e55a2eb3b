"""Background polls: named pollers the scheduler calls while a run is suspended.

A poll is a WAITING task whose `poller` names a function registered here and whose `params` say
what to poll. The scheduler calls the poller on its schedule; when it reports done, the task is
completed with the value and the run is woken. Integrations register their own pollers (the
OpenAI one polls files, assistant runs and background responses).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .exceptions import EngineError

DEFAULT_INTERVAL = 1.0
DEFAULT_MAX_INTERVAL = 30.0
DEFAULT_TIMEOUT = 3600.0
MIN_INTERVAL = 0.01
MAX_INTERVAL_CAP = 3600.0
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_BACKOFF = 10.0


@dataclass(frozen=True)
class PollResult:
    """What one poll found: `done` with a JSON `value`, or not yet."""

    done: bool
    value: Any = None
    # Set when the poll itself knows the outcome is a failure (recorded as the task's error).
    error: dict[str, Any] | None = None
    # Tokens a finished paid call spent (an assistant run's usage), recorded with the outcome in
    # engine_task_usage: {"provider", "model", "prompt_tokens", ...}.
    usage: dict[str, Any] | None = None


Poller = Callable[[dict[str, Any]], Awaitable[PollResult]]

_registry: dict[str, Poller] = {}


def register(name: str, poller: Poller) -> None:
    _registry[name] = poller


def get(name: str) -> Poller:
    try:
        return _registry[name]
    except KeyError:
        raise EngineError(
            f"no poller named {name!r} is registered in this worker: load the app whose "
            "integration registers it (`engine run APP`)"
        ) from None


def registered() -> frozenset[str]:
    return frozenset(_registry)


@dataclass(frozen=True)
class PollSchedule:
    """When a poll task polls: first `interval` seconds after the call, each next poll `backoff`
    times later, capped at `max_interval`; `timeout` seconds after it began it gives up.

    Refused at construction when out of bounds. Recorded in the task's `poll_state` (with the
    count of polls so far), where the scheduler reads it back.
    """

    interval: float = DEFAULT_INTERVAL
    max_interval: float = DEFAULT_MAX_INTERVAL
    backoff: float = 1.5
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        interval, max_interval, timeout = self.interval, self.max_interval, self.timeout
        # Written so that NaN fails every comparison and is refused; infinities exceed the caps.
        if not MIN_INTERVAL <= interval <= max_interval <= MAX_INTERVAL_CAP:
            raise EngineError(
                f"poll interval={interval}, max_interval={max_interval}: need "
                f"{MIN_INTERVAL} <= interval <= max_interval <= {MAX_INTERVAL_CAP:.0f} seconds"
            )
        if not 0 < timeout <= MAX_TIMEOUT:
            raise EngineError(
                f"poll timeout={timeout}: use more than 0 and at most {MAX_TIMEOUT:.0f}s"
            )
        if not 1.0 <= self.backoff <= MAX_BACKOFF:
            raise EngineError(
                f"poll backoff={self.backoff}: use a factor from 1 to {MAX_BACKOFF:.0f}"
            )

    def delay(self, polls: int) -> float:
        """Seconds from poll number `polls` (1 = the first) to the next one."""
        return min(self.interval * self.backoff**polls, self.max_interval)

    def state(self, polls: int = 0) -> dict[str, Any]:
        """The task's `poll_state`: this schedule and the polls made so far."""
        return {
            "interval": self.interval,
            "max_interval": self.max_interval,
            "backoff": self.backoff,
            "timeout": self.timeout,
            "polls": polls,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PollSchedule:
        interval = float(state.get("interval", 1.0))
        return cls(
            interval,
            float(state.get("max_interval", interval)),
            float(state.get("backoff", 1.0)),
            float(state.get("timeout", DEFAULT_TIMEOUT)),
        )


_SECRET_HEADERS = ("authorization", "cookie", "key", "token", "secret")


def check_http_params(url: str, headers: dict[str, str] | None) -> None:
    if not url.startswith(("http://", "https://")):
        raise EngineError(f"background_poll url {url!r}: give an http:// or https:// URL")
    for name in headers or {}:
        if any(word in name.lower() for word in _SECRET_HEADERS):
            raise EngineError(
                f"background_poll header {name!r} looks secret and would be recorded in the "
                "task log: register a poller of your own (engine.pollers.register) that reads "
                "the secret from the worker's environment instead"
            )


def _http_get(url: str, method: str, headers: dict[str, str]) -> PollResult:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        exc.close()
        return PollResult(done=False)
    except (urllib.error.URLError, TimeoutError, OSError):
        return PollResult(done=False)  # not 2xx yet, or not reachable yet: poll again
    try:
        return PollResult(done=True, value=json.loads(body) if body else None)
    except ValueError:
        return PollResult(done=True, value=body.decode("utf-8", "replace"))


async def http_poller(params: dict[str, Any]) -> PollResult:
    """The generic poller behind `io.background_poll`: done when the URL answers 2xx."""
    return await asyncio.to_thread(
        _http_get, params["url"], params.get("method", "GET"), params.get("headers") or {}
    )


register("http", http_poller)
