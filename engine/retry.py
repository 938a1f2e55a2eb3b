"""Retry policies: how often a failing task runs again, and how long it waits in between."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .exceptions import EngineError

MAX_ATTEMPTS_CAP = 100
MAX_DELAY_CAP = 24 * 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts every execution, the first included; delays are in seconds.

    The n-th retry waits `min(max_delay, min_delay * factor ** (n - 1))`, or what the failure
    itself asks for (a `retry_after` attribute, as rate-limit errors carry), capped at `max_delay`
    or, when the failure states a bound of its own (`max_retry_after`: a provider's reset time
    is worth waiting for in full), at that bound.

    A failure may also claim attempts beyond `max_attempts` (`extra_attempts`: rate limits,
    which say nothing about whether the call can succeed): it ends the task only once
    `max_attempts + extra_attempts` attempts were made, capped at MAX_ATTEMPTS_CAP.
    """

    max_attempts: int = 3
    min_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        for name in ("min_delay", "max_delay", "factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise EngineError(f"RetryPolicy({name}={value!r}): give a number")
            if not math.isfinite(value):
                raise EngineError(f"RetryPolicy({name}={value!r}): give a finite number")
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise EngineError(f"RetryPolicy(max_attempts={self.max_attempts!r}): give an integer")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_CAP:
            raise EngineError(
                f"RetryPolicy(max_attempts={self.max_attempts}): use 1 to {MAX_ATTEMPTS_CAP}"
            )
        if not 0 <= self.min_delay <= self.max_delay <= MAX_DELAY_CAP:
            raise EngineError(
                f"RetryPolicy(min_delay={self.min_delay}, max_delay={self.max_delay}): need "
                f"0 <= min_delay <= max_delay <= {MAX_DELAY_CAP:.0f} seconds"
            )
        if self.factor < 1:
            raise EngineError(f"RetryPolicy(factor={self.factor}): use a factor of 1 or more")

    def delay(self, attempt: int, exc: BaseException | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        asked = _seconds(getattr(exc, "retry_after", None))
        if asked is not None:
            bound = _seconds(getattr(exc, "max_retry_after", None))
            return min(asked, self.max_delay if bound is None else bound, MAX_DELAY_CAP)
        return float(min(self.max_delay, self.min_delay * self.factor ** (attempt - 1)))

    def attempts_for(self, exc: BaseException) -> int:
        """How many attempts in all the task may make when `exc` is how the last one failed."""
        extra = getattr(exc, "extra_attempts", 0)
        if isinstance(extra, bool) or not isinstance(extra, int) or extra < 0:
            extra = 0
        return min(self.max_attempts + extra, max(self.max_attempts, MAX_ATTEMPTS_CAP))


def _seconds(value: object) -> float | None:
    """`value` as a number of seconds, or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


NO_RETRY = RetryPolicy(max_attempts=1, min_delay=0.0, max_delay=0.0)


def is_retryable(exc: BaseException) -> bool:
    """An exception may say it is final (a 400 from an API) with `retryable = False`."""
    return bool(getattr(exc, "retryable", True))
