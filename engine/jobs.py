"""`@job`: declares a job, and the registry a worker loads its jobs from."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import jsonschema
from pydantic import BaseModel, ValidationError

from . import limits
from .exceptions import EngineError, PayloadValidationError

JobFunction = Callable[[Any, Any, Any], Awaitable[Any]]


@runtime_checkable
class Integration(Protocol):
    """What `@job(integrations={name: ...})` accepts: something that binds to a run's `io`."""

    id: str

    def bind(self, io: Any) -> Any:
        """The object a job sees as `io.<name>` during one execution."""

    def register_pollers(self) -> None:
        """Registers the background pollers its waiting calls use (in `engine.pollers`)."""


@dataclass(frozen=True)
class Job:
    id: str
    version: str
    fn: JobFunction
    integrations: Mapping[str, Integration] = field(default_factory=dict)
    payload_model: type[BaseModel] | None = None

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    def payload_schema(self) -> dict[str, Any] | None:
        return self.payload_model.model_json_schema() if self.payload_model else None

    def check_payload(self, payload: Any) -> Any:
        """The payload as it will be stored (JSON), or PayloadValidationError."""
        if self.payload_model is None:
            return payload
        try:
            return self.payload_model.model_validate(payload).model_dump(mode="json")
        except ValidationError as exc:
            raise PayloadValidationError(
                f"payload for job {self.id!r} is invalid: {_short(exc)}"
            ) from None

    def load_payload(self, stored: Any) -> Any:
        return self.payload_model.model_validate(stored) if self.payload_model else stored

    async def __call__(self, payload: Any, io: Any, ctx: Any) -> Any:
        return await self.fn(payload, io, ctx)


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def check_against_schema(job_id: str, payload: Any, schema: dict[str, Any] | None) -> None:
    """Validates a payload against a registered JSON schema (no app code needed)."""
    if not schema:
        return
    try:
        jsonschema.validate(payload, schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "payload"
        raise PayloadValidationError(
            f"payload for job {job_id!r} is invalid: {where}: {exc.message}"
        ) from None


class Registry:
    """The jobs known to this process, by id (one version each)."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def clear(self) -> None:
        self._jobs.clear()


registry = Registry()


def job(
    id: str,
    version: str = "1",
    *,
    integrations: Mapping[str, Integration] | None = None,
    payload: type[BaseModel] | None = None,
) -> Callable[[JobFunction], Job]:
    """Declares an `async def (payload, io, ctx)` as a job."""
    if not id or not isinstance(id, str):
        raise EngineError("@job(id=...): give the job a non-empty string id")
    limits.check_text(id, "@job id", limits.MAX_JOB_ID_LENGTH, control=True)
    limits.check_text(
        str(version), f"@job({id!r}) version", limits.MAX_VERSION_LENGTH, control=True
    )

    def decorate(fn: JobFunction) -> Job:
        if not inspect.iscoroutinefunction(fn):
            raise EngineError(f"@job({id!r}) decorates {fn!r}: a job must be an `async def`")
        for name, integration in (integrations or {}).items():
            if not name.isidentifier() or name in _IO_NAMES:
                raise EngineError(
                    f"@job({id!r}) integrations key {name!r}: use a Python identifier that "
                    f"is not one of {sorted(_IO_NAMES)}"
                )
            if not isinstance(integration, Integration):
                raise EngineError(
                    f"@job({id!r}) integrations[{name!r}] is not an integration: pass e.g. "
                    "integrations.openai.OpenAI(id='openai')"
                )
        declared = Job(id, str(version), fn, dict(integrations or {}), payload)
        registry.add(declared)
        return declared

    return decorate


_IO_NAMES = frozenset({"run_task", "wait", "background_poll", "logger", "call", "poll"})
