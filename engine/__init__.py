"""A durable-execution engine for async Python jobs, with a SQL task log.

Decorate an `async def (payload, io, ctx)` with `@job`; every step it takes through `io` is a
task recorded in the database, so a crash, a restart or a wait never repeats finished work.
"""

from .client import Engine
from .context import Context
from .exceptions import (
    AppLoadError,
    DatabaseError,
    DivergenceError,
    DuplicateKeyError,
    EngineError,
    InvalidRunStateError,
    NotSerializableError,
    PayloadValidationError,
    PollTimeoutError,
    RunNotFoundError,
    TaskError,
    TaskTimeoutError,
    UnknownJobError,
)
from .flow import Concurrency
from .integration import Integration
from .io import IO, Task
from .jobs import Job, job
from .pollers import PollResult
from .retry import RetryPolicy
from .worker import Worker

__all__ = [
    "IO",
    "AppLoadError",
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
    "RetryPolicy",
    "RunNotFoundError",
    "Task",
    "TaskError",
    "TaskTimeoutError",
    "UnknownJobError",
    "Worker",
    "job",
]
