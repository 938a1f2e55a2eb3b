"""A durable-execution engine for async Python jobs, with a SQL task log.

Decorate an `async def (payload, io, ctx)` with `@job`; every step it takes through `io` is a
task recorded in the database, so a crash, a restart or a wait never repeats finished work.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import (
    AppLoadError,
    ChildRunError,
    DatabaseError,
    DivergenceError,
    DuplicateKeyError,
    EngineError,
    InvalidRunStateError,
    NotSerializableError,
    PayloadValidationError,
    PollTimeoutError,
    RunNotFoundError,
    RunTimeoutError,
    TaskError,
    TaskTimeoutError,
    UnknownJobError,
)

if TYPE_CHECKING:
    from .client import Engine
    from .context import Context
    from .events import SentEvent, SentSignal
    from .flow import Concurrency
    from .integration import Integration
    from .io import IO, Task
    from .jobs import Job, job
    from .pollers import PollResult
    from .ratelimit import RateLimit, rate_limits
    from .retry import RetryPolicy
    from .schedules import Schedule
    from .streams import StreamChunk
    from .worker import Worker

# The rest of the public API is imported on first use (PEP 562): `import engine` must stay cheap
# because every `engine` command starts with it, and most never touch SQLAlchemy or pydantic.
_LAZY = {
    "Engine": ".client",
    "Context": ".context",
    "Concurrency": ".flow",
    "IO": ".io",
    "Task": ".io",
    "Integration": ".integration",
    "Job": ".jobs",
    "Schedule": ".schedules",
    "job": ".jobs",
    "PollResult": ".pollers",
    "RateLimit": ".ratelimit",
    "rate_limits": ".ratelimit",
    "RetryPolicy": ".retry",
    "SentEvent": ".events",
    "SentSignal": ".events",
    "StreamChunk": ".streams",
    "Worker": ".worker",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "IO",
    "AppLoadError",
    "ChildRunError",
    "Concurrency",
    "Context",
    "DatabaseError",
    "DivergenceError",
    "DuplicateKeyError",
    "Engine",
    "EngineError",
    "Integration",
    "InvalidRunStateError",
    "Job",
    "NotSerializableError",
    "PayloadValidationError",
    "PollResult",
    "PollTimeoutError",
    "RateLimit",
    "RetryPolicy",
    "RunNotFoundError",
    "RunTimeoutError",
    "Schedule",
    "SentEvent",
    "SentSignal",
    "StreamChunk",
    "Task",
    "TaskError",
    "TaskTimeoutError",
    "UnknownJobError",
    "Worker",
    "job",
    "rate_limits",
]
