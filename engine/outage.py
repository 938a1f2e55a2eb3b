"""Riding out a database outage: one line when it starts, one when it ends, paced retries between.

A worker must not exit because PostgreSQL restarted, a connection was cut or the SQLite file was
locked past its busy timeout: it waits with exponential backoff and jitter, stays quiet while the
outage lasts, and carries on as soon as the database answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .exceptions import DatabaseError

T = TypeVar("T")

FIRST_DELAY = 0.1
MAX_DELAY = 5.0
# How long `engine run` keeps trying to reach the database when it starts (a server that is
# restarting); an error that is not transient (bad URL, no such host, wrong password) fails at once.
START_PATIENCE = 60.0
# The database must answer for this long before the outage is reported over: right after a
# restart, pooled connections opened before it fail one by one, and that is the same outage.
SETTLE = 1.0


def backoff(attempt: int, first: float = FIRST_DELAY, cap: float = MAX_DELAY) -> float:
    """The delay before retry number `attempt` (0-based): doubling, capped, with full jitter
    in its upper half so many workers do not retry in lockstep."""
    delay = min(cap, first * 2.0 ** min(attempt, 30))
    return delay / 2 + random.uniform(0, delay / 2)


def is_transient(exc: DatabaseError) -> bool:
    # Errors raised before the store classified them count as transient: an outage is the
    # likelier cause, and retrying is what keeps the worker alive.
    return bool(getattr(exc, "transient", True))


class Outage:
    """The state of one database outage as seen by one loop.

    `failed(exc)` when an attempt fails (logs the start, once), `await pause(stop)` before the
    next attempt, `recovered()` when an attempt succeeds (logs the end, once the database has
    kept answering for `settle` seconds; failures before that belong to the same outage).
    """

    def __init__(self, log: logging.Logger, what: str = "database", settle: float = SETTLE) -> None:
        self.log = log
        self.what = what
        self.settle = settle
        self.since: float | None = None
        self.answered: float | None = None  # first success since the last failure
        self.attempts = 0
        self._last: str | None = None
        self._escalated = False

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, exc: DatabaseError) -> None:
        message = exc.message
        self.answered = None
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("%s unavailable: %s; retrying", self.what, message)
        elif not is_transient(exc) and message == self._last and not self._escalated:
            # Not an outage the database will get over by itself: someone has to act.
            self._escalated = True
            self.log.error("%s keeps refusing: %s; still retrying", self.what, message)
        self._last = message
        self.attempts += 1

    async def pause(self, stop: asyncio.Event | None = None) -> None:
        """Sleeps the next backoff delay, or until `stop` is set."""
        delay = backoff(self.attempts - 1)
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()

    def recovered(self) -> None:
        if self.since is None:
            return
        now = time.monotonic()
        if self.answered is None:
            self.answered = now
            self.attempts = 0  # a failure now starts the backoff over
        if now - self.answered < self.settle:
            return
        took = self.answered - self.since
        self.log.warning("%s reachable again after %.1f s", self.what, took)
        self.since = None
        self.answered = None
        self.attempts = 0
        self._last = None
        self._escalated = False


async def retry_transient(
    attempt: Callable[[], Awaitable[T]],
    log: logging.Logger,
    patience: float = START_PATIENCE,
) -> T:
    """Runs `attempt` until it succeeds, retrying transient DatabaseErrors for `patience` seconds.

    A non-transient error, a server that never answered, or an error still there after
    `patience` is raised as it is."""
    outage = Outage(log)
    deadline = time.monotonic() + patience
    while True:
        try:
            result = await attempt()
        except DatabaseError as exc:
            if not is_transient(exc) or never_answered(exc) or time.monotonic() >= deadline:
                raise
            outage.failed(exc)
            await outage.pause()
            continue
        outage.settle = 0.0  # nothing else is going to succeed to confirm it
        outage.recovered()
        return result


def never_answered(exc: BaseException) -> bool:
    """No server answered at all (connection refused, no such host, connect timeout).

    At start-up this is far more often a wrong URL than a restart, so it is reported at once;
    a worker that has been running rides it out like any other outage."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        # Refused, unresolvable, unreachable, timed out. Not a ConnectionError in general: a
        # connection accepted and then dropped (a restarting server, a proxy in front of one:
        # asyncpg's "unexpected connection_lost() call") was answered, and is ridden out.
        if isinstance(err, ConnectionRefusedError) or (
            isinstance(err, OSError) and not isinstance(err, ConnectionError)
        ):
            return True
        orig = getattr(err, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None, err.__cause__, err.__context__]
    return False
