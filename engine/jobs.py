"""`@job`: declares a job, and the registry a worker loads its jobs from."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import durations, events, flow, limits, versions
from . import integration as integration_seam
from .exceptions import EngineError, PayloadValidationError
from .integration import Integration
from .payloads import PayloadType, declared
from .records import Registration

if TYPE_CHECKING:
    from datetime import timedelta

    from .schedules import Schedule

JobFunction = Callable[[Any, Any, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Job:
    id: str
    version: str
    fn: JobFunction
    integrations: Mapping[str, Integration[Any]] = field(default_factory=dict)
    # From `payload=` or the payload parameter's annotation (engine.payloads); None: unchecked.
    payload_type: PayloadType | None = None
    priority: int = 0
    concurrency: flow.Concurrency | None = None
    # Every event of this name starts a run (engine.events, docs/triggers.md).
    on_event: str | None = None
    # Cron schedules (engine.schedules) and the deadline of each run, in seconds (None: none).
    schedules: tuple[Schedule, ...] = ()
    timeout: float | None = None

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def where(self) -> str:
        """`module:qualname` of the job function, to name it in errors."""
        return f"{self.fn.__module__}:{self.fn.__qualname__}"

    def payload_schema(self) -> dict[str, Any] | None:
        return self.payload_type.schema() if self.payload_type else None

    def check_payload(self, payload: Any) -> Any:
        """The payload as it will be stored (JSON), or PayloadValidationError."""
        return self.payload_type.check(self.id, payload) if self.payload_type else payload

    def load_payload(self, stored: Any) -> Any:
        return self.payload_type.load(stored) if self.payload_type else stored

    async def __call__(self, payload: Any, io: Any, ctx: Any) -> Any:
        return await self.fn(payload, io, ctx)


def registration(job: Job) -> Registration:
    """What `engine_jobs` records of a job."""
    spec = job.concurrency.spec() if job.concurrency else None
    return Registration(
        job.id, job.version, job.payload_schema(), job.priority, spec, job.on_event, job.timeout
    )


def check_against_schema(job_id: str, payload: Any, schema: dict[str, Any] | None) -> None:
    """Validates a payload against a registered JSON schema (no app code needed)."""
    if not schema:
        return
    # Only a job that registered a payload schema needs jsonschema (0.15 s of CPU to import).
    import jsonschema

    try:
        jsonschema.validate(payload, schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "payload"
        raise PayloadValidationError(
            f"payload for job {job_id!r} is invalid: {where}: {exc.message}"
        ) from None


class Registry:
    """The jobs known to this process, by id and version."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], Job] = {}

    def add(self, job: Job) -> None:
        """Adds `job`; a second job with its id and version is an error, unless it is the same
        function declared again (a module reloaded, or one file imported under two names)."""
        known = self._jobs.get((job.id, job.version))
        if known is not None and not _same_function(known.fn, job.fn):
            raise EngineError(
                f"two jobs have the id {job.id!r} (version {job.version}): {known.where} and "
                f"{job.where}; give each job its own id (or, to keep an old version's code "
                "running, its own version=)"
            )
        self._jobs[(job.id, job.version)] = job

    def get(self, job_id: str, version: str | None = None) -> Job | None:
        """The job at `version`, or without one the highest version this process defines."""
        if version is not None:
            return self._jobs.get((job_id, version))
        defined = {v: job for (i, v), job in self._jobs.items() if i == job_id}
        chosen = versions.highest(defined)
        return defined[chosen] if chosen is not None else None

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def clear(self) -> None:
        self._jobs.clear()


registry = Registry()


def job(
    id: str,
    version: str = "1",
    *,
    integrations: Mapping[str, Integration[Any]] | None = None,
    payload: Any = None,
    priority: int = 0,
    concurrency: int | flow.Concurrency | None = None,
    on_event: str | None = None,
    schedule: str | Schedule | Sequence[str | Schedule] | None = None,
    timezone: str | None = None,
    timeout: timedelta | float | None = None,
) -> Callable[[JobFunction], Job]:
    """Declares an `async def (payload, io, ctx)` as a job.

    `payload=` (a pydantic model, TypedDict or dataclass), or the same type as the annotation of
    the function's first parameter, validates the payload when a run is triggered; the job
    receives the validated value. Two jobs with one id and version in one process are refused.
    `priority` is its runs' default priority; `concurrency` caps how many of its runs are
    RUNNING at once across every worker (a number, or `Concurrency(limit, key=...)` per key).
    See docs/flow-control.md. `on_event` starts a run of the job for every event of that name
    (its payload is the run's payload; docs/triggers.md). `schedule` (cron text read in
    `timezone`, default UTC, or `Schedule`s) triggers runs on its ticks; `timeout` (a timedelta
    or seconds) cancels a run still unfinished that long after it was due to start.
    """
    if not id or not isinstance(id, str):
        raise EngineError("@job(id=...): give the job a non-empty string id")
    limits.check_text(id, "@job id", limits.MAX_JOB_ID_LENGTH, control=True)
    limits.check_text(
        str(version), f"@job({id!r}) version", limits.MAX_VERSION_LENGTH, control=True
    )
    for name, integration in (integrations or {}).items():
        integration_seam.check(id, name, integration)

    flow.check_priority(priority, f"@job({id!r}) priority")
    limit = flow.as_concurrency(concurrency, id)
    if on_event is not None:
        events.check_name(on_event, f"@job({id!r}) on_event")
    run_timeout = durations.seconds(timeout, f"@job({id!r}) timeout")
    cron: tuple[Schedule, ...] = ()
    if schedule is not None or timezone is not None:
        # cronsim is imported only by jobs that have a schedule.
        from .schedules import schedules_of

        cron = schedules_of(id, schedule, timezone)

    def decorate(fn: JobFunction) -> Job:
        if not inspect.iscoroutinefunction(fn):
            raise EngineError(f"@job({id!r}) decorates {fn!r}: a job must be an `async def`")
        # The names where the job is declared resolve a string annotation (a model defined
        # in a function, under `from __future__ import annotations`).
        namespace = sys._getframe(1).f_locals
        payload_type = declared(id, fn, payload, namespace)
        declared_job = Job(
            id,
            str(version),
            fn,
            dict(integrations or {}),
            payload_type,
            priority,
            limit,
            on_event,
            cron,
            run_timeout,
        )
        if cron:
            from .schedules import check_payload

            check_payload(declared_job)
        registry.add(declared_job)
        return declared_job

    return decorate


def _same_function(a: JobFunction, b: JobFunction) -> bool:
    if a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__):
        return True
    code_a, code_b = getattr(a, "__code__", None), getattr(b, "__code__", None)
    return (
        code_a is not None
        and code_b is not None
        and a.__qualname__ == b.__qualname__
        and code_a.co_filename == code_b.co_filename
    )
