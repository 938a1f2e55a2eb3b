"""Cron schedules: `@job(schedule=...)`, when each fires, and the runs its ticks create.

A schedule is durable state (`engine_schedules`: its next fire time, its paused flag), registered
by the workers that serve its job. Every worker's scheduler loop fires the due ticks in one
transaction that moves `next_fire_at` on (guarded, so two workers cannot fire one tick) and
inserts the tick's run under a deterministic idempotency key (`schedule:<expr>@<tick>`), so a
tick gives one run across all workers, and a crash between the two loses neither.

Cron text is parsed and evaluated by cronsim (timezones and DST through zoneinfo).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from . import codec, flow
from .exceptions import EngineError, PayloadValidationError

if TYPE_CHECKING:
    from .jobs import Job

log = logging.getLogger("engine.schedules")

MissedPolicy = Literal["latest", "all", "skip"]
MISSED_POLICIES: tuple[str, ...] = ("latest", "all", "skip")
# `missed="all"` catches up at most this many ticks per schedule (the latest ones): a schedule
# that fires every minute, stopped for a month, does not flood the queue (INVARIANTS 7).
MAX_CATCH_UP = 100
# `missed="skip"`: a tick fired later than this counts as missed and gives no run. A running
# worker fires a tick within about a second; this absorbs a loaded machine, not a stop.
SKIP_AFTER = 10.0
MAX_EXPRESSION_LENGTH = 100


@dataclass(frozen=True)
class Schedule:
    """A cron expression, the timezone it is read in, and what to do with ticks missed while
    no worker ran (`"latest"`: one run for the latest of them; `"all"`: one run for each, up to
    the latest 100; `"skip"`: none, only the ticks to come)."""

    cron: str
    timezone: str = "UTC"
    missed: MissedPolicy = "latest"

    def __post_init__(self) -> None:
        where = f"schedule {self.cron!r}"
        if not isinstance(self.cron, str) or not self.cron.strip():
            raise EngineError(f'{where}: give a cron expression, e.g. "*/15 * * * *"')
        if len(self.cron) > MAX_EXPRESSION_LENGTH:
            raise EngineError(f"{where}: at most {MAX_EXPRESSION_LENGTH} characters")
        object.__setattr__(self, "cron", " ".join(self.cron.split()))
        zone = _zone(self.timezone, where)
        try:
            next(CronSim(self.cron, datetime.now(zone)))
        except (CronSimError, StopIteration) as exc:
            raise EngineError(
                f"{where} is not valid cron ({exc or 'it never fires'}): use five fields, "
                'minute hour day-of-month month day-of-week, e.g. "0 9 * * 1-5"'
            ) from None
        if self.missed not in MISSED_POLICIES:
            raise EngineError(
                f"{where}: missed={self.missed!r}: use one of {', '.join(MISSED_POLICIES)}"
            )

    def next_after(self, when: float) -> float:
        """The first tick strictly after `when` (epoch seconds)."""
        return next_after(self.cron, self.timezone, when)


def next_after(cron: str, timezone: str, when: float) -> float:
    start = datetime.fromtimestamp(when, ZoneInfo(timezone))
    return next(CronSim(cron, start)).timestamp()


def due_ticks(cron: str, timezone: str, due: float, now: float, missed: str) -> list[float]:
    """The ticks to fire now, oldest first, for a schedule whose next tick was `due` (<= now):
    the latest tick at or before `now` (policy "latest"; "skip" too, unless it is more than
    SKIP_AFTER seconds old), or every one since `due`, at most MAX_CATCH_UP (policy "all")."""
    zone = ZoneInfo(timezone)
    # cronsim steps strictly before its start: start a second on, at a whole second.
    back = CronSim(cron, datetime.fromtimestamp(int(now) + 1, zone), reverse=True)
    ticks: list[float] = []
    limit = MAX_CATCH_UP if missed == "all" else 1
    for tick in back:
        at = tick.timestamp()
        if at < due or len(ticks) == limit:
            break
        ticks.append(at)
    if missed == "skip":
        return [at for at in ticks if now - at <= SKIP_AFTER]
    return ticks[::-1]


def schedules_of(
    job_id: str,
    schedule: str | Schedule | Sequence[str | Schedule] | None,
    timezone: str | None,
) -> tuple[Schedule, ...]:
    """`@job(schedule=..., timezone=...)` as Schedules; `timezone` applies to cron strings."""
    if schedule is None:
        if timezone is not None:
            raise EngineError(f"@job({job_id!r}): timezone= needs a schedule=")
        return ()
    given = [schedule] if isinstance(schedule, str | Schedule) else list(schedule)
    found: list[Schedule] = []
    for item in given:
        if isinstance(item, Schedule):
            found.append(item)
        elif isinstance(item, str):
            found.append(Schedule(item, timezone or "UTC"))
        else:
            raise EngineError(
                f"@job({job_id!r}) schedule={item!r}: give a cron string or a Schedule"
            )
    seen = set()
    for s in found:
        if (s.cron, s.timezone) in seen:
            raise EngineError(f"@job({job_id!r}): schedule {s.cron!r} ({s.timezone}) is twice")
        seen.add((s.cron, s.timezone))
    return tuple(found)


def check_payload(job: Job) -> None:
    """A scheduled job receives `{"scheduled_at": ...}`: refuse at decoration a payload type
    that would refuse it at every tick."""
    try:
        job.check_payload(tick_payload(0.0))
    except PayloadValidationError as exc:
        raise EngineError(
            f"@job({job.id!r}) has a schedule, so its payload is {{'scheduled_at': ISO time}}, "
            f"which its payload type refuses ({exc.message}): accept that payload (or none)"
        ) from None


def tick_payload(tick: float) -> dict[str, Any]:
    return {"scheduled_at": iso(tick)}


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="microseconds")


def idempotency_key(cron: str, tick: float) -> str:
    return f"schedule:{cron}@{iso(tick)}"


def tick_of(idempotency_key: str | None) -> datetime | None:
    """The tick a run was started for, from its idempotency key (`ctx.scheduled_at`); None
    for a run no schedule started."""
    if not idempotency_key or not idempotency_key.startswith("schedule:"):
        return None
    try:
        tick = datetime.fromisoformat(idempotency_key.rpartition("@")[2])
    except ValueError:  # a key that only looks like a tick's, given to a trigger by hand
        return None
    return tick.astimezone(UTC) if tick.tzinfo is not None else None


def registrations(jobs: Iterable[Job], now: float) -> list[dict[str, Any]]:
    """The `engine_schedules` rows a worker registers for its jobs (new ones fire from now)."""
    return [
        {
            "job_id": job.id,
            "expression": s.cron,
            "timezone": s.timezone,
            "job_version": job.version,
            "missed": s.missed,
            "next_fire_at": s.next_after(now),
            "registered_at": now,
        }
        for job in jobs
        for s in job.schedules
    ]


def tick_runs(row: Mapping[str, Any], job: Job, now: float) -> tuple[float, list[dict[str, Any]]]:
    """For a due schedule row: its next fire time after `now`, and the runs of its due ticks
    (the values `Store.fire_schedules` inserts)."""
    cron, zone = row["expression"], row["timezone"]
    due = row["next_fire_at"].timestamp()
    runs = []
    for tick in due_ticks(cron, zone, due, now, row["missed"]):
        stored = codec.check(job.check_payload(tick_payload(tick)), f"the payload of {job.id!r}")
        key = flow.key_of(None, job.id, stored, job.concurrency)
        runs.append(
            {
                "tick": tick,
                "job_id": job.id,
                "job_version": job.version,
                "payload": stored,
                "idempotency_key": idempotency_key(cron, tick),
                "priority": job.priority,
                "concurrency": None
                if key is None or job.concurrency is None
                else (key, job.concurrency.limit),
                "timeout": job.timeout,
            }
        )
    return next_after(cron, zone, now), runs


def planner(jobs: Mapping[str, Job]) -> Callable[[Any, float], tuple[float, list[dict[str, Any]]]]:
    """`Store.fire_schedules`'s plan for the jobs a worker serves (by `job@version`)."""

    def plan(row: Any, now: float) -> tuple[float, list[dict[str, Any]]]:
        values = row._mapping
        job = jobs[f"{values['job_id']}@{values['job_version']}"]
        try:
            return tick_runs(values, job, now)
        except Exception as exc:  # a tick that cannot make its run is skipped, not retried
            log.error(
                "schedule %r of job %s: tick skipped, its run could not be made: %s",
                values["expression"],
                job.id,
                exc,
            )
            return next_after(values["expression"], values["timezone"], now), []

    return plan


def _zone(name: str, where: str) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise EngineError(f'{where}: timezone={name!r}: give an IANA name, e.g. "Europe/Paris"')
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise EngineError(
            f'{where}: unknown timezone {name!r}: give an IANA name, e.g. "Europe/Paris" or "UTC"'
        ) from None
