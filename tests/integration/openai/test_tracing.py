"""OpenTelemetry traces (engine.tracing): a real worker runs real jobs, one of them calling the
fake OpenAI server, and the real SDK's in-memory exporter receives the spans."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from support import unique_id

from engine import IO, Context, RetryPolicy, job, tracing
from integrations.openai import OpenAI
from integrations.openai.testing import FakeOpenAI

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    yield found
    found.shutdown()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    yield made
    made.shutdown()


class Lines(logging.Handler):
    """Collects the engine's log records, with the ids engine.tracing.LogIds adds."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        tracing.install_log_ids(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("engine.job")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_run_and_its_tasks_are_spans_with_ids_tokens_and_errors(
    oai: Any,
    fake: FakeOpenAI,
    integration: OpenAI,
    provider: TracerProvider,
    exporter: InMemorySpanExporter,
    lines: Lines,
) -> None:
    fake.set_usage(prompt_tokens=120, completion_tokens=30)
    flaky_calls: list[int] = []

    @job(id=unique_id("traced"), integrations={"openai": integration})
    async def traced(payload: Any, io: IO, ctx: Context) -> str:
        async def inner(task: Any) -> int:
            return 2

        async def outer(task: Any) -> int:
            return await io.run_task("inner", inner) + 1

        async def flaky(task: Any) -> str:
            flaky_calls.append(task.attempt)
            if task.attempt == 1:
                raise ValueError("first attempt fails")
            return "ok"

        await io.run_task("outer", outer)
        await io.run_task("flaky", flaky, retry=RetryPolicy(max_attempts=2, min_delay=0.01))
        io.logger.info("asked the model")
        done = await io.openai.chat.completions.create(
            "chat", model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
        assistant = await io.openai.beta.assistants.create("assistant", model="gpt-4o")
        run = await io.openai.beta.threads.create_and_run_until_completion(
            "thread-run",
            assistant_id=assistant.id,
            thread={"messages": [{"role": "user", "content": "go"}]},
        )
        return f"{done.id} {run.status}"

    # A long lease: on a busy machine a 5 s one may lapse, and a recovered run repeats steps.
    await oai.harness.start(traced, tracer_provider=provider, lease_seconds=60)
    run_id = await oai.engine.trigger(traced.id)
    run = await oai.engine.wait_for(run_id, 30)
    assert run["status"] == "COMPLETED", run["error"]

    spans = exporter.get_finished_spans()
    executions = by_name(spans, f"run {traced.id}")
    assert executions, [s.name for s in spans]
    for execution in executions:
        assert execution.parent is None  # each execution is a root
        assert execution.attributes is not None
        assert execution.attributes["engine.run.id"] == run_id
        assert execution.attributes["engine.job.id"] == traced.id
        assert isinstance(execution.attributes["engine.run.attempt"], int)
    assert executions[0].attributes is not None
    assert executions[0].attributes["engine.run.attempt"] == 1
    assert executions[-1].attributes is not None
    assert executions[-1].attributes["engine.run.outcome"] == "COMPLETED"
    assert executions[-1].status.status_code != StatusCode.ERROR

    [outer] = by_name(spans, "outer")
    [inner] = by_name(spans, "inner")
    # A task is a child of its execution, a subtask of its task; one trace.
    assert outer.parent is not None and inner.parent is not None and outer.context is not None
    assert outer.parent.span_id in {e.context.span_id for e in executions if e.context}
    assert inner.parent.span_id == outer.context.span_id
    assert inner.context is not None and inner.context.trace_id == outer.context.trace_id
    assert inner.attributes == {
        "engine.run.id": run_id,
        "engine.task.key": "outer/inner",
        "engine.task.name": "inner",
        "engine.task.kind": "task",
        "engine.task.attempt": 1,
    }

    # Each attempt is a span; the failed one records its exception.
    attempts = sorted(by_name(spans, "flaky"), key=lambda s: s.start_time or 0)
    assert [s.attributes["engine.task.attempt"] for s in attempts if s.attributes] == [1, 2]
    assert flaky_calls == [1, 2]
    failed, succeeded = attempts
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "ValueError: first attempt fails"
    assert failed.attributes is not None and failed.attributes["engine.task.retrying"] is True
    [event] = failed.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert succeeded.status.status_code != StatusCode.ERROR

    [chat] = by_name(spans, "chat.completions.create")
    assert chat.attributes is not None
    assert chat.attributes["engine.task.key"] == "chat"
    assert chat.attributes["gen_ai.system"] == "openai"
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 120
    assert chat.attributes["gen_ai.usage.output_tokens"] == 30
    assert fake.count("/v1/chat/completions") == 1

    # A background poll's wait is a span of its own, from the call to the poll that ended it,
    # with the tokens the OpenAI run spent.
    [wait] = [s for s in spans if s.name.startswith("wait ")]
    assert wait.parent is None and wait.attributes is not None
    assert wait.attributes["engine.run.id"] == run_id
    assert wait.attributes["gen_ai.response.model"] == "gpt-4o"
    assert wait.attributes["gen_ai.usage.input_tokens"] == 120
    [create] = by_name(spans, "beta.threads.create_and_run")
    assert create.attributes is not None
    assert create.attributes["engine.task.key"] == "thread-run:create"
    assert wait.start_time is not None and create.start_time is not None
    assert wait.start_time >= create.start_time

    # The job's log line names its run and the trace it was written in.
    [line] = [r for r in lines.records if "asked the model" in r.getMessage()]
    assert getattr(line, "run_id", None) == run_id
    # (The execution that wrote it also made the chat call: a retry delay may have unloaded
    # the run after "flaky", making a new execution, a new trace.)
    assert chat.context is not None
    assert getattr(line, "trace_id", None) == f"{chat.context.trace_id:032x}"
    assert f"run={run_id} trace={chat.context.trace_id:032x}" in line.__dict__["ids"]


async def test_a_failed_run_records_its_error_on_the_execution_span(
    oai: Any, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    @job(id=unique_id("traced-fail"))
    async def failing(payload: Any, io: IO, ctx: Context) -> None:
        async def boom(task: Any) -> None:
            raise RuntimeError("no luck")

        await io.run_task("boom", boom)

    await oai.harness.start(failing, tracer_provider=provider)
    run_id = await oai.engine.trigger(failing.id)
    run = await oai.engine.wait_for(run_id, 30)
    assert run["status"] == "FAILED"

    spans = exporter.get_finished_spans()
    [execution] = by_name(spans, f"run {failing.id}")
    assert execution.attributes is not None
    assert execution.attributes["engine.run.outcome"] == "FAILED"
    assert execution.status.status_code == StatusCode.ERROR
    assert execution.status.description == "RuntimeError: no luck"
    [boom] = by_name(spans, "boom")
    assert boom.status.status_code == StatusCode.ERROR
    assert boom.attributes is not None and boom.attributes["engine.task.retrying"] is False


def test_without_a_configured_provider_nothing_is_recorded() -> None:
    """OpenTelemetry installed but not configured: no span, so tasks skip tracing entirely."""
    found = tracing.start_run(
        tracing.tracer(), run_id="r", job_id="j", job_version="1", attempt=1, worker_id="w"
    )
    assert found is None


def test_without_opentelemetry_installed_the_engine_has_no_tracer() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "from engine import tracing\n"
        "assert tracing.tracer() is None\n"
        "print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr
