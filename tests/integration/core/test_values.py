"""What can be recorded: one encoding on both databases, exact on round trip, and a clear refusal,
recorded once, for what it cannot store (docs/concepts.md, "What can be recorded").

Every value goes through a real run on SQLite and PostgreSQL. A round trip is checked on replay:
the job records the value, is unloaded at a short wait, and compares what the replay returns.
A refusal must end the step ERRORED (or the run FAILED) with the path inside the value, the
function having run exactly once: never a run stuck RUNNING, never the function re-executed.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import forked
import pytest
from pydantic import BaseModel
from sqlalchemy import text
from support import Harness, unique_id

from engine import IO, Context, EngineError, NotSerializableError, RetryPolicy, Task, job, pollers
from engine.pollers import PollResult

CALLS: Counter[str] = Counter()
ENGINE = str(Path(sys.executable).parent / "engine")


class Recorded(BaseModel):
    n: int


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (dict key order aside: PostgreSQL's JSONB
    orders keys its own way)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# -- exact round trips ---------------------------------------------------------------------------

EXACT = {
    "2**70": 2**70,
    "-(2**70)": -(2**70),
    "2**64-1": 2**64 - 1,
    "1e300": 1e300,
    "1.5e20": 1.5e20,
    "-1.7976931348623157e308": -1.7976931348623157e308,
    "1.0": 1.0,
    "5e-324": 5e-324,
    "nested numbers": {"big": [2**70, 1e300, 1.5e20], "small": -(2**64 - 1)},
    "unicode": {"clé": "naïve ☃ 𝄞", "tab\tkey": "line\nbreak"},
}


@pytest.mark.parametrize("name", list(EXACT))
async def test_values_round_trip_exactly_through_outputs_replay_and_return(
    harness: Harness, name: str
) -> None:
    value = EXACT[name]
    tag = unique_id("exact")

    @job(id=tag)
    async def exact(payload: Any, io: IO, ctx: Context) -> Any:
        async def produce(task: Task) -> Any:
            CALLS[tag] += 1
            return value

        got = await io.run_task("v", produce, params={"value": value})
        await io.wait("pause", 0.01)  # unloaded here: what follows sees the replayed value
        assert same(got, value), f"replay gave {got!r}"
        return got

    await harness.start(exact)
    view = await harness.run(exact, {"value": value})
    assert view["status"] == "COMPLETED", view["error"]
    assert CALLS[tag] == 1
    # The run's return value, its payload and the task's params and output, as read back.
    assert same(view["output"], value)
    assert same(view["payload"], {"value": value})
    task = view["tasks"][0]
    assert same(task["output"], value)
    assert same(task["params"], {"value": value})


# -- refusals, recorded once ---------------------------------------------------------------------


def _local_model() -> Any:
    class Local(BaseModel):
        n: int

    return Local(n=1)


REFUSED = {
    "nan": ({"a": [0, 1, math.nan]}, 'value["a"][2] is nan'),
    "inf": ({"a": math.inf}, 'value["a"] is inf'),
    "-inf": ([-math.inf], "value[0] is -inf"),
    "nul": ({"s": "a\x00b"}, 'value["s"] holds a NUL'),
    "nul key": ({"k\x00": 1}, "key holds a NUL"),
    "surrogate": (["ok", "\ud800"], "value[1] holds a lone surrogate"),
    "deep": (nested(250), "nested more than 200 levels"),
    "local class": (None, "define the class at module level"),
}


@pytest.mark.parametrize("name", list(REFUSED))
async def test_a_refused_output_errors_the_task_once(harness: Harness, name: str) -> None:
    value, expected = REFUSED[name]
    tag = unique_id("refused")

    @job(id=tag)
    async def refused(payload: Any, io: IO, ctx: Context) -> Any:
        async def produce(task: Task) -> Any:
            CALLS[tag] += 1
            return _local_model() if name == "local class" else value

        return await io.run_task("v", produce)

    await harness.start(refused)
    view = await harness.run(refused)
    assert view["status"] == "FAILED"
    assert CALLS[tag] == 1
    (task,) = view["tasks"]
    assert task["status"] == "ERRORED" and task["attempts"] == 1
    assert task["error"]["type"] == "NotSerializableError"
    assert "io.run_task('v') output" in task["error"]["message"]
    assert expected in task["error"]["message"]
    assert expected in view["error"]["message"]


@pytest.mark.parametrize("name", ["nan", "nul", "surrogate", "deep"])
async def test_a_refused_job_return_value_fails_the_run_once(harness: Harness, name: str) -> None:
    value, expected = REFUSED[name]
    tag = unique_id("ret")

    @job(id=tag)
    async def returns(payload: Any, io: IO, ctx: Context) -> Any:
        CALLS[tag] += 1
        return value

    await harness.start(returns)
    view = await harness.run(returns)
    assert view["status"] == "FAILED"
    assert CALLS[tag] == 1
    assert "the job's return value" in view["error"]["message"]
    assert expected in view["error"]["message"]


@pytest.mark.parametrize("name", ["nan", "nul", "surrogate", "deep"])
async def test_a_refused_param_fails_before_the_function_runs(harness: Harness, name: str) -> None:
    value, expected = REFUSED[name]
    tag = unique_id("params")

    @job(id=tag)
    async def with_params(payload: Any, io: IO, ctx: Context) -> None:
        async def step(task: Task) -> None:
            CALLS[tag] += 1

        await io.run_task("v", step, params=value)

    await harness.start(with_params)
    view = await harness.run(with_params)
    assert view["status"] == "FAILED"
    assert CALLS[tag] == 0 and view["tasks"] == []
    assert expected in view["error"]["message"]


# -- keys, names, durations: checked at the call -------------------------------------------------

BAD_CALLS: dict[str, tuple[str, Any, str]] = {
    "600-char key": ("key", "k" * 600, "use at most 500"),
    "NUL key": ("key", "a\x00b", "control characters"),
    "newline key": ("key", "a\nb", "control characters"),
    "surrogate key": ("key", "a\ud800", "lone surrogate"),
    "long name": ("name", "n" * 301, "use at most 300"),
    "inf timeout": ("timeout", math.inf, "finite number of seconds"),
    "nan timeout": ("timeout", math.nan, "finite number of seconds"),
    "zero timeout": ("timeout", 0, "> 0"),
    "inf wait": ("wait", math.inf, "finite number of seconds"),
    "nan wait": ("wait", math.nan, "finite number of seconds"),
    "1e12 wait": ("wait", 1e12, "at most"),
    "negative wait": ("wait", -1, ">= 0"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
async def test_a_bad_key_name_or_duration_is_refused_before_anything_is_written(
    harness: Harness, name: str
) -> None:
    what, bad, expected = BAD_CALLS[name]
    tag = unique_id("input")

    @job(id=tag)
    async def bad_input(payload: Any, io: IO, ctx: Context) -> None:
        async def step(task: Task) -> None:
            CALLS[tag] += 1

        if what == "wait":
            await io.wait("k", bad)
        elif what == "key":
            await io.run_task(bad, step)
        elif what == "name":
            await io.run_task("k", step, name=bad)
        else:
            await io.run_task("k", step, timeout=bad)

    await harness.start(bad_input)
    view = await harness.run(bad_input)
    assert view["status"] == "FAILED"
    assert view["error"]["type"] == "EngineError"
    assert expected in view["error"]["message"]
    assert CALLS[tag] == 0 and view["tasks"] == []


def test_retry_policies_and_poll_schedules_must_be_finite() -> None:
    for field in ("min_delay", "max_delay", "factor"):
        with pytest.raises(EngineError, match=field):
            nan: dict[str, Any] = {field: math.nan}
            RetryPolicy(**nan)
    with pytest.raises(EngineError, match="factor"):
        RetryPolicy(factor=math.inf)
    for interval, max_interval, timeout in [
        (math.nan, 10, 60),
        (1, math.inf, 60),
        (1, 10, math.nan),
        (1, 10, math.inf),
    ]:
        with pytest.raises(EngineError):
            pollers.PollSchedule(interval, max_interval, timeout=timeout)
    with pytest.raises(EngineError, match="backoff"):
        pollers.PollSchedule(1, 10, backoff=math.nan, timeout=60)


async def test_an_infinite_wait_costs_other_runs_nothing(sqlite_harness: Harness) -> None:
    """One run's bad wait is refused at the call: it never reaches the SQLite group commit
    that it would share with the other runs' writes."""
    tag = unique_id("crowd")

    @job(id=tag)
    async def crowd(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> Any:
            CALLS[f"{tag}:{payload['n']}:{task.key}"] += 1
            return task.key

        for key in ("a", "b", "c"):
            await io.run_task(key, step)
            if payload["bad"] and key == "b":
                await io.wait("k", float("inf"))
        return payload["n"]

    await sqlite_harness.start(crowd, concurrency=64)
    engine = sqlite_harness.engine
    runs = await asyncio.gather(
        *(engine.trigger(tag, {"n": n, "bad": n % 10 == 0}) for n in range(55))
    )
    finals = await asyncio.gather(*(engine.wait_for(r, 120) for r in runs))
    for n, run in enumerate(finals):
        if n % 10 == 0:
            assert run["status"] == "FAILED" and "finite" in run["error"]["message"]
        else:
            assert run["status"] == "COMPLETED", run["error"]
    repeated = {k: c for k, c in CALLS.items() if k.startswith(tag) and c != 1}
    assert repeated == {}
    bad = sum(1 for n in range(55) if n % 10 == 0)
    assert sum(1 for k in CALLS if k.startswith(tag)) == (55 - bad) * 3 + bad * 2


# -- diagnostic text: escaped, never refused -----------------------------------------------------


async def test_log_lines_with_nul_or_surrogates_are_recorded_escaped(harness: Harness) -> None:
    tag = unique_id("logs")

    @job(id=tag)
    async def logs(payload: Any, io: IO, ctx: Context) -> str:
        io.logger.info("nul\x00here", field="v\x00", other=1)
        io.logger.warn("lone \ud800 surrogate", bad=math.nan)
        io.logger.info("deep", value=nested(250))
        await io.wait("pause", 0.01)
        return "done"

    await harness.start(logs)
    view = await harness.run(logs)
    assert view["status"] == "COMPLETED", view["error"]
    lines = await harness.engine.run_logs(view["id"])
    assert [line["message"] for line in lines] == ["nul\\x00here", "lone \\ud800 surrogate", "deep"]
    assert lines[0]["fields"] == {"field": "'v\\x00'", "other": "1"}
    assert lines[1]["fields"] == {"bad": "nan"}


async def test_an_exception_message_with_nul_is_recorded_escaped_once(harness: Harness) -> None:
    tag = unique_id("raises")

    @job(id=tag)
    async def raises(payload: Any, io: IO, ctx: Context) -> None:
        async def boom(task: Task) -> None:
            CALLS[tag] += 1
            raise ValueError("bad\x00news \ud800 here")

        await io.run_task("boom", boom)

    await harness.start(raises)
    view = await harness.run(raises)
    assert view["status"] == "FAILED"
    assert CALLS[tag] == 1
    (task,) = view["tasks"]
    assert task["status"] == "ERRORED" and task["attempts"] == 1
    assert task["error"]["message"] == "bad\\x00news \\ud800 here"
    assert view["error"]["message"] == "bad\\x00news \\ud800 here"


# -- payloads ------------------------------------------------------------------------------------


async def test_a_payload_the_codec_refuses_creates_no_run(harness: Harness) -> None:
    @job(id=unique_id("payload"))
    async def echo(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    await harness.start(echo)
    for payload, expected in [
        ({"x": math.nan}, 'value["x"] is nan'),
        ({"x": "\x00"}, "NUL"),
        (nested(250), "nested more than 200"),
    ]:
        with pytest.raises(NotSerializableError, match=expected.replace("[", r"\[")):
            await harness.engine.trigger(echo.id, payload)
    with pytest.raises(EngineError, match="at most 300"):
        await harness.engine.trigger(echo.id, 1, idempotency_key="i" * 301)
    assert await harness.engine.list_runs(echo.id) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_DATABASE_URL"}
    return forked.run([ENGINE, *args], text=True, timeout=60, env=env)


async def test_cli_payloads_round_trip_or_fail_in_one_line(harness: Harness) -> None:
    @job(id=unique_id("cli"))
    async def echo(payload: Any, io: IO, ctx: Context) -> Any:
        return payload

    await harness.start(echo)
    url = harness.url
    for bad, expected in [
        ("NaN", "NaN is not JSON"),
        ('{"x": Infinity}', "Infinity is not JSON"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ("[" * 250 + "]" * 250, "nested more than 200"),
        ('{"x": "\\u0000"}', "NUL"),
    ]:
        result = await asyncio.to_thread(_cli, "trigger", echo.id, "--payload", bad,
                                         "--database-url", url)  # fmt: skip
        assert result.returncode != 0
        assert "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert expected in result.stderr
    assert await harness.engine.list_runs(echo.id) == []

    payload = {"max": 2**64 - 1, "big": -(2**70), "float": 1e300, "f": 1.5e20}
    result = await asyncio.to_thread(_cli, "trigger", echo.id, "--payload", json.dumps(payload),
                                     "--database-url", url)  # fmt: skip
    assert result.returncode == 0, result.stderr
    run = await harness.engine.wait_for(result.stdout.strip(), 30)
    assert run["status"] == "COMPLETED"
    assert same(run["output"], payload)
    shown = await asyncio.to_thread(
        _cli, "runs", "show", run["id"], "--json", "--database-url", url
    )
    assert same(json.loads(shown.stdout)["output"], payload)


async def test_runs_show_prints_what_older_versions_recorded(sqlite_harness: Harness) -> None:
    """Rows written before values were checked (a lone surrogate in an error, NaN in an output,
    as SQLite stored them) print as text and as valid JSON, not as a traceback."""

    @job(id=unique_id("old"))
    async def old(payload: Any, io: IO, ctx: Context) -> int:
        return 1

    await sqlite_harness.start(old)
    view = await sqlite_harness.run(old)
    async with sqlite_harness.store.begin() as conn:
        await conn.execute(
            text(
                "UPDATE engine_runs SET status = 'FAILED', output = '[NaN, 1]', "
                "error = :error WHERE id = :id"
            ),
            {"id": view["id"], "error": '{"type": "X", "message": "lone \\ud800 here"}'},
        )
    url = sqlite_harness.url
    rich = await asyncio.to_thread(_cli, "runs", "show", view["id"], "--database-url", url)
    assert rich.returncode == 0, rich.stderr
    assert "lone \\ud800 here" in rich.stdout
    as_json = await asyncio.to_thread(
        _cli, "runs", "show", view["id"], "--json", "--database-url", url
    )
    assert as_json.returncode == 0, as_json.stderr
    shown = json.loads(as_json.stdout)
    assert shown["output"] == ["nan", 1] and shown["error"]["message"] == "lone \\ud800 here"


# -- polls and types that cannot be rebuilt ------------------------------------------------------


async def test_a_poll_value_the_codec_refuses_errors_the_poll_once(harness: Harness) -> None:
    tag = unique_id("poll")

    async def poisoned(params: dict[str, Any]) -> PollResult:
        CALLS[tag] += 1
        return PollResult(done=True, value={"x": [math.nan]})

    pollers.register(tag, poisoned)

    @job(id=tag)
    async def polls(payload: Any, io: IO, ctx: Context) -> Any:
        return await io.poll("p", tag, {}, name="poisoned", interval=0.05)

    await harness.start(polls)
    view = await harness.run(polls)
    assert view["status"] == "FAILED"
    assert CALLS[tag] == 1
    (task,) = view["tasks"]
    assert task["status"] == "ERRORED"
    assert 'value["x"][0] is nan' in task["error"]["message"]


async def test_a_recorded_type_that_no_longer_imports_fails_the_run_clearly(
    harness: Harness,
) -> None:
    tag = unique_id("gone")
    fail_first = {"on": True}

    @job(id=tag)
    async def gone(payload: Any, io: IO, ctx: Context) -> Any:
        async def make(task: Task) -> Any:
            CALLS[tag] += 1
            return Recorded(n=1)

        made = await io.run_task("m", make)
        if fail_first["on"]:
            raise RuntimeError("first execution ends here")
        return made.n

    await harness.start(gone)
    view = await harness.run(gone)
    assert view["status"] == "FAILED" and view["tasks"][0]["status"] == "COMPLETED"
    async with harness.store.begin() as conn:  # the class was renamed since it was recorded
        await conn.execute(
            text("UPDATE engine_tasks SET output_type = :t WHERE run_id = :id"),
            {"t": f"{__name__}:RenamedSince", "id": view["id"]},
        )
    fail_first["on"] = False
    await harness.engine.retry(view["id"])
    run = await harness.engine.wait_for(view["id"], 30)
    assert run["status"] == "FAILED"
    assert run["error"]["type"] == "DivergenceError"
    assert "RenamedSince, which cannot be imported now" in run["error"]["message"]
    assert CALLS[tag] == 1


async def test_an_integrations_encoded_output_is_held_to_the_same_rules(harness: Harness) -> None:
    """`io.call` with an integration's own encoder (as the OpenAI integration records responses):
    what the encoder produces is checked too, so an API reply holding a NUL fails the step once."""
    tag = unique_id("custom")

    @job(id=tag)
    async def custom(payload: Any, io: IO, ctx: Context) -> Any:
        async def fetch(task: Task) -> Any:
            CALLS[tag] += 1
            return "reply"

        def encode(value: Any) -> tuple[Any, str | None]:
            return {"content": f"a\x00{value}"}, None

        return await io.call("c", fetch, kind="custom", name="custom", encode=encode)

    await harness.start(custom)
    view = await harness.run(custom)
    assert view["status"] == "FAILED"
    assert CALLS[tag] == 1
    (task,) = view["tasks"]
    assert task["status"] == "ERRORED" and task["attempts"] == 1
    assert "custom('c') output: value[\"content\"] holds a NUL" in task["error"]["message"]
