"""Rate limits shared by every worker: `RateLimit`, `rate_limits({...})` and the limiter itself.

The state of a limit lives in one row of `engine_rate_limits` (GCRA: the time the next request
and the next token may go, as epoch seconds). Before a rate-limited task attempt, the worker
*reserves* its place with one atomic upsert on that row: the row says when the request may be
sent, and moves on by the request's cost. A place due now (or within IN_MEMORY_WAIT) is taken
at once; a later one turns the task into a persisted wait until that time (the run is unloaded,
as for a retry delay), and the attempt goes on when it is resumed, without reserving again.

Reservations are paced (one request every `per / requests` seconds, tokens likewise): in any
window of length `per`, at most `requests` requests are sent, and a fleet never bursts into a
provider's limit. See docs/flow-control.md, "Rate limits".
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import clock, limits
from .exceptions import DatabaseError, EngineError, WriteFailed
from .records import TaskRow, TaskWrite

if TYPE_CHECKING:
    from .sql import DriverSQL

PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}
# A reservation due this soon is waited for in memory: suspending and resuming the run would
# take longer than the wait itself. A suspended run is also woken this much before its place
# and waits the rest in memory, so that the scheduler's latency in resuming it does not make
# late requests bunch up.
IN_MEMORY_WAIT = 2.0
# A task suspended by the limiter is WAITING with `rate_limit_wait` = {"rate_limit", "at"}:
# engine.waiting reads it as the reason, and IO.call, on resuming, knows its place is held.
# Rows written before that column (migration 0012) carried it as `error`, of this type.
WAIT_TYPE = "RateLimitWait"
MAX_NAME_LENGTH = 300

_log = logging.getLogger("engine.ratelimit")


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` requests and `tokens` tokens `per` second, minute, hour or day,
    across every worker. Either may be omitted (not both)."""

    requests: int | None = None
    tokens: int | None = None
    per: str = "second"
    # The share of the limit left unused: places are paced at (1 - headroom) of the rate, so
    # that requests which leave on their places but reach the provider bunched (a stalled
    # network or worker) still fit in every window the provider counts (docs/flow-control.md).
    headroom: float = 0.02

    def __post_init__(self) -> None:
        if self.per not in PERIODS:
            raise EngineError(
                f"RateLimit(per={self.per!r}): give one of {', '.join(map(repr, PERIODS))}"
            )
        for name in ("requests", "tokens"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise EngineError(f"RateLimit({name}={value!r}): give a whole number, 1 or more")
        if (
            isinstance(self.headroom, bool)
            or not isinstance(self.headroom, int | float)
            or not 0 <= self.headroom <= 0.5
        ):
            raise EngineError(
                f"RateLimit(headroom={self.headroom!r}): give a share of the limit to leave "
                "unused, from 0 to 0.5 (default 0.02)"
            )
        if self.requests is None and self.tokens is None:
            raise EngineError(
                "RateLimit(): give requests=, tokens= or both, e.g. "
                "RateLimit(requests=10, per='second')"
            )

    @property
    def request_interval(self) -> float:
        """Seconds one request takes of the limit (0 without a request limit)."""
        return self._pace / self.requests if self.requests else 0.0

    @property
    def token_interval(self) -> float:
        """Seconds one token takes of the limit (0 without a token limit)."""
        return self._pace / self.tokens if self.tokens else 0.0

    @property
    def _pace(self) -> float:
        return PERIODS[self.per] / (1.0 - self.headroom)


_declared: dict[str, RateLimit] = {}


def rate_limits(declared: Mapping[str, RateLimit]) -> None:
    """Declares the app's named limits, `io.run_task(..., rate_limit=name)` uses them:
    `engine.rate_limits({"crm-api": RateLimit(requests=10, per="second")})` in the app module.
    Every worker loading the app shares them, through the database."""
    for name, limit in declared.items():
        check_name(name, "rate_limits")
        if not isinstance(limit, RateLimit):
            raise EngineError(f"rate_limits({{{name!r}: {limit!r}}}): give an engine.RateLimit")
    _declared.update(declared)


def check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise EngineError(f"{where}: a rate limit name must be a non-empty string, not {name!r}")
    return limits.check_text(name, f"{where} rate limit name", MAX_NAME_LENGTH, control=True)


def declared(name: str, where: str) -> RateLimit:
    check_name(name, where)
    found = _declared.get(name)
    if found is None:
        known = ", ".join(map(repr, sorted(_declared))) or "none declared"
        raise EngineError(
            f"{where}: no rate limit named {name!r} ({known}); declare it in the app, "
            f"engine.rate_limits({{{name!r}: RateLimit(requests=10, per='second')}})"
        )
    return found


# The database's clock, one for every worker: places never depend on a worker's own clock
# (skewed, or stale after a wait for a connection). PostgreSQL's now() is the start of the
# statement's own transaction; SQLite's 'now' is fixed for the statement, in milliseconds.
_NOW = {
    True: "CAST(EXTRACT(EPOCH FROM now()) AS DOUBLE PRECISION)",
    False: "((julianday('now') - 2440587.5) * 86400.0)",
}
_GRANT = "{greatest}({now}, engine_rate_limits.requests_tat, engine_rate_limits.tokens_tat)"
# Without a request limit (`ri` = 0), requests_tat holds no place: a token refund must be able
# to bring the next place forward.
_RESERVE = (
    "INSERT INTO engine_rate_limits (name, requests_tat, tokens_tat, updated_at) "
    "VALUES (:name, {now} + :ri, {now} + :ti, {now}) "
    "ON CONFLICT (name) DO UPDATE SET "
    f"requests_tat = CASE WHEN :ri > 0 THEN {_GRANT} + :ri ELSE 0 END, "
    f"tokens_tat = {_GRANT} + :ti, "
    "updated_at = {now} "
    "RETURNING requests_tat, tokens_tat, {no_sync}updated_at"
)
# Waits are relative (seconds from the database's now): a provider's `reset` header is too.
_ADJUST = (
    "UPDATE engine_rate_limits SET "
    "requests_tat = {greatest}(requests_tat, {now} + :requests_wait), "
    "tokens_tat = {greatest}(tokens_tat + :token_delta, {now} + :tokens_wait), "
    "updated_at = {now} "
    "WHERE name = :name RETURNING {no_sync}updated_at"
)
_CLOCK = "SELECT {now}"
_FLOATS = dict.fromkeys(("ri", "ti", "token_delta", "requests_wait", "tokens_wait"), "float8")


def _statement(template: str, postgres: bool) -> DriverSQL:
    key = (template, postgres)
    if key not in _statements:
        # A reservation need not survive a database crash (losing the last one only lets one
        # call go a little early): on PostgreSQL its commit does not wait for the WAL flush,
        # which is most of its cost. It is as atomic and visible to other workers as any commit.
        no_sync = "set_config('synchronous_commit', 'off', true), " if postgres else ""
        sql = template.format(
            now=_NOW[postgres], greatest="GREATEST" if postgres else "MAX", no_sync=no_sync
        )
        from .sql import driver_sql  # here: `import engine` stays free of SQLAlchemy

        _statements[key] = driver_sql(sql, postgres, _FLOATS)
    return _statements[key]


_statements: dict[tuple[str, bool], DriverSQL] = {}
# Per database URL: the database's clock minus this worker's, and when it was measured. Each
# answer gives a lower bound (the database read its clock before the answer came back, so the
# way back is counted in, and a slow way back makes it lower); the best is the highest seen,
# lowered by at most DRIFT a second since it was seen so that clocks that drift apart are
# followed. A place converted with a lower bound is never before its time: at worst late by
# the best way back seen.
_offsets: dict[str, tuple[float, float]] = {}
DRIFT = 0.001


def _measured(url: str, db_now: float) -> None:
    now = clock.now()
    seen = db_now - now
    best = _offsets.get(url)
    if best is not None:
        seen = max(seen, best[0] - DRIFT * (now - best[1]))
    _offsets[url] = (seen, now)


async def _execute(store: Any, template: str, values: dict[str, Any]) -> tuple[Any, ...]:
    """One statement, one trip; returns its row, the database's now last."""
    row = await store.write_returning(_statement(template, store.is_postgres), values)
    assert row is not None  # an upsert and a SELECT always return their row
    _measured(str(store.url), float(row[-1]))
    return tuple(row)


async def local_time(store: Any, at: float) -> float:
    """`at` on the database's clock, as this worker's clock reads it."""
    if str(store.url) not in _offsets:
        await _execute(store, _CLOCK, {})
    return at - _offsets[str(store.url)][0]


# A worker reserves up to this much of a high limit's places at once and hands them out itself,
# one trip to the database for many calls (at most MAX_BATCH). A place is never used before its
# time, so the limit holds; an unused batch lets at most BATCH_SECONDS' worth of the limit go
# late, together. Limits of fewer than 2 requests per BATCH_SECONDS reserve one place per call.
BATCH_SECONDS = 0.05
MAX_BATCH = 100
_batches: dict[tuple[str, str, RateLimit], deque[float]] = {}


def batch_size(limit: RateLimit) -> int:
    if limit.tokens or not limit.requests:
        return 1  # tokens differ per call: each reserves its own
    return max(1, min(MAX_BATCH, int(BATCH_SECONDS / limit.request_interval)))


async def take_place(store: Any, name: str, limit: RateLimit, tokens: int) -> float:
    """When the next call under `name` may go (the database's clock): from this worker's
    batch, else reserved."""
    size = batch_size(limit)
    if size == 1:
        return await reserve(store, name, limit, tokens)
    key = (str(store.url), name, limit)
    batch = _batches.get(key)
    if batch:
        # Places too old to be used (see LATE_SLACK) are dropped, not handed out to be missed.
        stale = clock.now() + _offsets.get(str(store.url), (0.0, 0.0))[0] - LATE_SLACK
        while batch and batch[0] < stale:
            batch.popleft()
    if batch:
        return batch.popleft()
    first = await reserve(store, name, limit, 0, places=size)
    places = deque(first + i * limit.request_interval for i in range(size))
    taken = places.popleft()
    _batches[key] = places
    return taken


async def reserve(
    store: Any, name: str, limit: RateLimit, tokens: int, *, places: int = 1
) -> float:
    """Reserves one request of `tokens` tokens under `name`; returns when it may be sent, on
    the database's clock (`local_time` converts it).

    One statement: on PostgreSQL the upsert locks the row, on SQLite writes are serialized, so
    concurrent workers queue up one after another and never take the same place."""
    ti = tokens * limit.token_interval
    ri = limit.request_interval * places
    row = await _execute(store, _RESERVE, {"name": name, "ri": ri, "ti": ti})
    if limit.request_interval:
        return float(row[0]) - ri
    return float(row[1]) - ti


async def adjust(
    store: Any,
    name: str,
    limit: RateLimit,
    *,
    token_delta: int = 0,
    requests_wait: float = 0.0,
    tokens_wait: float = 0.0,
) -> None:
    """Corrects a limit after a call: `token_delta` tokens more (or fewer) than reserved, and
    nothing sent for `requests_wait` / `tokens_wait` seconds (what a provider's headers say of
    its own limit)."""
    values = {
        "name": name,
        "token_delta": token_delta * limit.token_interval,
        "requests_wait": requests_wait,
        "tokens_wait": tokens_wait,
    }
    await store.write_returning(_statement(_ADJUST, store.is_postgres), values)


@dataclass
class Charge:
    """What one task attempt takes of a limit: one request and `tokens` (an estimate)."""

    name: str
    limit: RateLimit
    tokens: int = 0
    store: Any = None

    async def settle(
        self, tokens: int | None = None, *, requests_wait: float = 0.0, tokens_wait: float = 0.0
    ) -> None:
        """After the call: the tokens it really took of the limit and what the provider says
        of its own (nothing more for `*_wait` seconds). Writes nothing when there is nothing
        to correct."""
        delta = (tokens - self.tokens) if tokens is not None and self.limit.tokens else 0
        if self.store is None or (not delta and requests_wait <= 0 and tokens_wait <= 0):
            return
        try:
            await adjust(
                self.store,
                self.name,
                self.limit,
                token_delta=delta,
                requests_wait=requests_wait,
                tokens_wait=tokens_wait,
            )
        except DatabaseError as exc:
            # A correction is advice to the next reservations: the call it follows succeeded
            # (or failed) whatever becomes of it.
            _log.warning("rate limit %r: correction not written: %s", self.name, exc)


def held_place(row: TaskRow | None) -> dict[str, Any] | None:
    """The place `row` waits for when it is a wait the limiter set ({"rate_limit", "at"}):
    its reservation is taken, the attempt may go. None for any other row."""
    if row is None or row.status != "WAITING":
        return None
    return row.rate_limit_wait or legacy_wait(row.error)


def legacy_wait(error: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A limiter's wait as rows before migration 0012 kept it, in `error`."""
    if error and error.get("type") == WAIT_TYPE:
        return {"rate_limit": error.get("rate_limit"), "at": error.get("at")}
    return None


# A place is used within this long after its time or not at all: a call that reaches its place
# later (a slow resume, a stalled event loop, a reservation that waited for a connection) takes
# a new one instead of going late, where it would bunch with the calls whose places come next.
# The requests a provider sees are then never closer together than the limit's pace allows,
# give or take this much (its own arrival jitter aside). A missed place stays taken: unused.
# (A provider enforcing 600 a minute as 10 a second tolerates 0.9 s.)
LATE_SLACK = 0.5
# After this many missed places in a row the call goes (late) rather than reserve forever.
MAX_MISSED = 5


async def admit(
    replay: Any, charge: Charge, recorded: TaskRow | None, waiting: Callable[..., TaskWrite]
) -> None:
    """Before a task attempt: returns once `charge` may be sent. A place further off than
    IN_MEMORY_WAIT suspends the run (a WAITING row written by `waiting(due_at=,
    rate_limit_wait=)`)."""
    store = charge.store = replay.store
    _place.set(None)
    held = held_place(recorded)
    if held is not None:
        # Resumed: the place was reserved before the run was suspended. A due time moved
        # earlier (by hand) is taken as is: the run does not suspend again.
        at = float(held.get("at") or 0.0)
        local = await _or_stop(replay, local_time(store, at))
        if await _reached(local, "resumed"):
            _place.set(_Place(charge, local))
            return
    for _ in range(MAX_MISSED):
        at = await _or_stop(replay, take_place(store, charge.name, charge.limit, charge.tokens))
        local = await _or_stop(replay, local_time(store, at))
        if local - clock.now() > IN_MEMORY_WAIT:
            place = {"rate_limit": charge.name, "at": at}
            # The row's due time is on this worker's clock, as every due time is.
            await replay.write(waiting(due_at=local - IN_MEMORY_WAIT, rate_limit_wait=place))
            await replay.park(local - IN_MEMORY_WAIT)
        if await _reached(local, "in memory"):
            _place.set(_Place(charge, local))
            return
    _log.warning("rate limit %r: %d places missed in a row, going late", charge.name, MAX_MISSED)


async def _or_stop(replay: Any, step: Awaitable[float]) -> float:
    """A reservation the database could not take stops the execution, as a write that failed
    does (engine.replay): the run is picked up again once its lease lapses, and reserves then.
    A reservation committed whose answer was lost leaves its place unused: a gap in the pace,
    never a burst."""
    try:
        return await step
    except DatabaseError as exc:
        if not exc.transient:
            raise
        replay.lost = True
        raise WriteFailed(f"reserving a rate-limit place: {exc.message}") from exc


async def _reached(local: float, how: str) -> bool:
    """Waits for a place at `local` (this worker's clock); False when it was missed."""
    await _until(local)
    late = clock.now() - local
    if late <= LATE_SLACK:
        return True
    _log.debug("rate limit place (%s) missed by %.3f s: reserving another", how, late)
    return False


async def _until(at: float) -> None:
    """Sleeps until `at`, IN_MEMORY_WAIT at most (a due time moved earlier is taken as is)."""
    wait = min(at - clock.now(), IN_MEMORY_WAIT)
    if wait > 0:
        await asyncio.sleep(wait)


@dataclass
class _Place:
    """The place a call was admitted at, for the check right before its request goes out."""

    charge: Charge
    local: float  # on this worker's clock
    checked: bool = False


# Set by `admit` in the run's context; the attempt (its own task when it has a timeout) runs in
# a copy of that context and sees the same _Place.
_place: ContextVar[_Place | None] = ContextVar("engine_ratelimit_place", default=None)


async def recheck() -> None:
    """Right before a rate-limited request leaves (an HTTP client's request hook): the
    request reached its place in `admit`, but the worker may have stalled since (a loaded
    machine, a blocked event loop). One that now goes more than LATE_SLACK after its place
    takes a new place and waits for it here, in memory (the run cannot suspend in the middle
    of its request), instead of bunching with the requests whose places come next. Only the
    first request of an attempt is checked: its place serves one request."""
    place = _place.get()
    if place is None or place.checked:
        return
    place.checked = True
    charge = place.charge
    for _ in range(MAX_MISSED):
        late = clock.now() - place.local
        if late <= LATE_SLACK:
            return
        _log.debug(
            "rate limit %r: request %.3f s past its place: reserving another", charge.name, late
        )
        try:
            at = await take_place(charge.store, charge.name, charge.limit, charge.tokens)
            place.local = await local_time(charge.store, at)
        except DatabaseError as exc:
            # No place to wait for: the request goes (late) rather than fail the attempt.
            _log.warning("rate limit %r: no new place for a late request: %s", charge.name, exc)
            return
        wait = place.local - clock.now()
        if wait > 0:
            await asyncio.sleep(wait)
    _log.warning("rate limit %r: %d places missed in a row, going late", charge.name, MAX_MISSED)
