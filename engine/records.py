"""The rows the engine passes between the store and an execution, as plain dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Registration:
    """What `engine_jobs` records of a job version: a worker registers it from the job's code,
    and a trigger without that code checks a new run against it (engine.launch)."""

    job_id: str
    version: str
    payload_schema: dict[str, Any] | None
    priority: int = 0
    # The concurrency spec ({"limit", "key"}), if the job declares a limit.
    concurrency: dict[str, Any] | None = None
    on_event: str | None = None
    # The job's own deadline for a run (`@job(timeout=)`), in seconds.
    timeout: float | None = None


@dataclass
class ClaimedRun:
    id: str
    job_id: str
    job_version: str
    payload: Any
    epoch: int
    attempt: int
    # The run that started this one with `io.invoke`, if any.
    parent_run_id: str | None = None
    # Its idempotency key: a schedule's tick is read from it (ctx.scheduled_at).
    idempotency_key: str | None = None


@dataclass
class TaskRow:
    """A recorded task, as an execution needs it for replay."""

    parent_path: str
    key: str
    kind: str
    name: str
    status: str
    attempts: int
    output: Any
    output_type: str | None
    error: dict[str, Any] | None
    due_at: datetime | None
    seq: int
    # Attempts made before the last `engine runs retry`: the retry policy counts from here.
    retry_base: int = 0
    # Suspended by the shared limiter: {"rate_limit": name, "at": its place} (engine.ratelimit).
    rate_limit_wait: dict[str, Any] | None = None


@dataclass
class TaskWrite:
    """One task row to insert, or to update where (run, parent_path, key) exists."""

    parent_path: str
    key: str
    kind: str
    name: str
    status: str
    attempts: int
    seq: int
    params: Any = None
    output: Any = None
    output_type: str | None = None
    error: dict[str, Any] | None = None
    due_at: float | None = None
    poller: str | None = None
    poll_state: dict[str, Any] | None = None
    next_poll_at: float | None = None
    started_at: float | None = None
    completed_at: float | None = None
    rate_limit_wait: dict[str, Any] | None = None
    # A paid call's tokens ({"provider", "model", "prompt_tokens", ...}: engine_task_usage),
    # written with the outcome; None for every other task.
    usage: dict[str, Any] | None = None
    # The attempt this write records failed and another follows: keep it in the attempt
    # history too (engine_task_attempts), in the same transaction.
    retried: bool = False


@dataclass
class LogWrite:
    parent_path: str
    line: str
    level: str
    message: str
    fields: dict[str, Any] | None
    created_at: float


@dataclass
class DuePoll:
    task_id: int
    run_id: str
    poller: str
    params: Any
    poll_state: dict[str, Any]
    # When the wait began: its timeout counts from here.
    started_at: float


@dataclass(slots=True)
class ChunkWrite:
    """One stream chunk to record (engine.streams): its place, its writer, its JSON text."""

    stream: str
    seq: int
    task: str
    attempt: int
    n: int
    data: str
    # A bare number: SQLite binds it as a BLOB, as engine.codec.sqlite_param does.
    number: bool
    written_at: float


@dataclass
class ChildStart:
    """A child run `io.invoke` starts, and its parent's WAITING task (kind "invoke"): both are
    written in one fenced transaction."""

    task: TaskWrite
    id: str
    job_id: str
    version: str
    payload: Any
    priority: int
    # (key, limit) for a job with a concurrency limit.
    concurrency: tuple[str, int] | None
    # The child job's `@job(timeout=)` in seconds: its deadline counts from its creation.
    timeout: float | None = None
