"""OpenTelemetry traces: a span for every execution of a run, and one for every task attempt.

Optional (`pip install 'engine[otel]'`). The engine only uses the OpenTelemetry API: spans go to
the TracerProvider the user configured (their own `trace.set_tracer_provider(...)`, or
`opentelemetry-instrument` with OTEL_* environment variables), or to the one given to the
worker. Without the API installed, or with no provider configured, a worker resolves no tracer
(or a non-recording one) once per execution and does nothing else: each task pays one `is None`
check.

A run's executions are separate traces (a run waiting a day is not one day-long span); every
span carries `engine.run.id`, so a backend finds all of a run's executions by it. Task spans
are children of their execution's span, subtasks of their task's, and whatever the task
function does under OpenTelemetry (an instrumented HTTP client, say) nests below.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

INSTRUMENTATION = "engine"

# The run a job's code is executing (set in the job's own asyncio context by the executor):
# what log lines written from inside a job say they belong to.
current_run: ContextVar[str | None] = ContextVar("engine_current_run", default=None)


def tracer(provider: Any = None) -> Tracer | None:
    """The engine's tracer from `provider` (else the global one); None without the API."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace.get_tracer(INSTRUMENTATION, tracer_provider=provider)


def start_run(
    tracer: Tracer | None,
    *,
    run_id: str,
    job_id: str,
    job_version: str,
    attempt: int,
    worker_id: str,
) -> Span | None:
    """The span of one execution of a run (a root), or None when nothing would record it."""
    if tracer is None:
        return None
    from opentelemetry import context

    span = tracer.start_span(
        f"run {job_id}",
        context=context.Context(),  # a root: not a child of the worker's loop
        attributes={
            "engine.run.id": run_id,
            "engine.job.id": job_id,
            "engine.job.version": job_version,
            "engine.run.attempt": attempt,
            "engine.worker.id": worker_id,
        },
    )
    if not span.is_recording():
        span.end()
        return None
    return span


def end_run(span: Span, status: str, error: BaseException | None) -> None:
    """Ends an execution's span with how it ended (COMPLETED, FAILED, WAITING, LOST)."""
    span.set_attribute("engine.run.outcome", status)
    if status == "FAILED" and error is not None:
        _record_error(span, error)
    span.end()


def start_task(
    tracer: Tracer,
    run_id: str,
    *,
    path: tuple[str, ...],
    name: str,
    kind: str,
    attempt: int,
) -> Span:
    """The span of one attempt of a task: a child of the current span (its execution's, or its
    parent task's)."""
    attributes: dict[str, Any] = {
        "engine.run.id": run_id,
        "engine.task.key": "/".join(path),
        "engine.task.name": name,
        "engine.task.kind": kind,
        "engine.task.attempt": attempt,
    }
    return tracer.start_span(name, attributes=attributes)


def end_task(
    span: Span,
    error: BaseException | None,
    *,
    usage: Mapping[str, Any] | None = None,
    params: Any = None,
    retrying: bool = False,
) -> None:
    """Ends a task attempt's span: its error, or the model and tokens a paid call spent
    (as the GenAI semantic conventions name them)."""
    if usage:
        span.set_attributes(_usage_attributes(usage, params))
    if error is not None:
        span.set_attribute("engine.task.retrying", retrying)
        _record_error(span, error)
    span.end()


def end_interrupted(span: Span, signal: BaseException) -> None:
    """The attempt was cut short by a control-flow signal (its run unloaded at a wait inside
    it, a lost lease, a stopping worker): not the task's error."""
    span.set_attribute("engine.task.interrupted", type(signal).__name__)
    span.end()


def record_wait(
    tracer: Tracer | None,
    *,
    run_id: str,
    task_id: int,
    poller: str,
    started_at: float,
    usage: Mapping[str, Any] | None = None,
    error: Mapping[str, Any] | None = None,
) -> None:
    """A span for a background poll's whole wait (from the call that began it to the poll that
    ended it), recorded by the scheduler when the wait ends: the run was unloaded meanwhile, so
    it is a root of its own, found by `engine.run.id`. An OpenAI run's tokens are here."""
    if tracer is None:
        return
    from opentelemetry import context

    span = tracer.start_span(
        f"wait {poller}",
        context=context.Context(),
        start_time=int(started_at * 1e9),
        attributes={"engine.run.id": run_id, "engine.task.id": task_id, "engine.poller": poller},
    )
    if span.is_recording():
        if usage:
            span.set_attributes(_usage_attributes(usage, None))
        if error:
            from opentelemetry.trace import Status, StatusCode

            text = f"{error.get('type', 'Error')}: {error.get('message', '')}"
            span.set_status(Status(StatusCode.ERROR, text))
    span.end()


def _usage_attributes(usage: Mapping[str, Any], params: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if usage.get("provider"):
        found["gen_ai.system"] = usage["provider"]
    requested = params.get("model") if isinstance(params, Mapping) else None
    if isinstance(requested, str):
        found["gen_ai.request.model"] = requested
    if usage.get("model"):
        found["gen_ai.response.model"] = usage["model"]
    for name, attribute in _TOKENS:
        if isinstance(usage.get(name), int):
            found[attribute] = usage[name]
    return found


_TOKENS = (
    ("prompt_tokens", "gen_ai.usage.input_tokens"),
    ("completion_tokens", "gen_ai.usage.output_tokens"),
    ("total_tokens", "engine.usage.total_tokens"),
    ("cached_tokens", "engine.usage.cached_tokens"),
    ("reasoning_tokens", "engine.usage.reasoning_tokens"),
)


def _record_error(span: Span, error: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def current(span: Span | None) -> AbstractContextManager[Any]:
    """Makes `span` the current span (for the task function and everything it starts)."""
    if span is None:
        return nullcontext()
    from opentelemetry import trace

    return trace.use_span(
        span, end_on_exit=False, record_exception=False, set_status_on_exception=False
    )


@contextmanager
def running(run_id: str, span: Span | None) -> Iterator[None]:
    """Inside, log lines carry `run_id` (see LogIds) and `span` (if any) is the current span."""
    token = current_run.set(run_id)
    try:
        with current(span):
            yield
    finally:
        current_run.reset(token)


class LogIds(logging.Filter):
    """Adds the run and the trace a log line was written in to its record: `run_id`,
    `trace_id` and `span_id` (None outside a run / a recording span), and `ids`, the
    " run=... trace=..." suffix `engine run`'s log format ends with (empty outside a run)."""

    def filter(self, record: logging.LogRecord) -> bool:
        run_id = current_run.get()
        trace_id = span_id = None
        # Only if something imported OpenTelemetry already: a log line never imports it.
        trace = sys.modules.get("opentelemetry.trace")
        if trace is not None:
            found = trace.get_current_span().get_span_context()
            if found.is_valid:
                trace_id, span_id = f"{found.trace_id:032x}", f"{found.span_id:016x}"
        record.run_id, record.trace_id, record.span_id = run_id, trace_id, span_id
        ids = f" run={run_id}" if run_id else ""
        record.ids = f"{ids} trace={trace_id} span={span_id}" if trace_id else ids
        return True


def install_log_ids(*handlers: logging.Handler) -> None:
    """Adds LogIds to `handlers` (idempotent)."""
    for handler in handlers:
        if not any(isinstance(f, LogIds) for f in handler.filters):
            handler.addFilter(LogIds())
