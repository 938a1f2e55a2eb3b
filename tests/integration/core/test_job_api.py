"""The job API end to end, on SQLite and PostgreSQL: the payload's type (annotation or
`payload=`), the omitted payload, forgotten awaits, params advice, the order of a run's times,
and integrations reached as `io.<name>` and `io.use(...)`."""

from __future__ import annotations

import gc
import warnings
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel
from support import Harness, unique_id

from engine import IO, Context, EngineError, PayloadValidationError, clock, job


class Order(BaseModel):
    order_id: int
    item: str = "pen"


async def fetch_total() -> int:
    return 42


# -- the payload -------------------------------------------------------------------------------


async def test_an_annotated_payload_is_validated_and_reaches_the_job_as_the_model(
    harness: Harness,
) -> None:
    @job(id=unique_id("annotated"))
    async def annotated(payload: Order, io: IO, ctx: Context) -> dict[str, Any]:
        return {"type": type(payload).__name__, "order_id": payload.order_id}

    await harness.start(annotated)
    with pytest.raises(PayloadValidationError, match="order_id: Input should be a valid integer"):
        await harness.engine.trigger(annotated.id, {"order_id": "x"})
    assert await harness.engine.list_runs(annotated.id) == []
    view = await harness.run(annotated, {"order_id": "7"})
    assert view["status"] == "COMPLETED", view["error"]
    assert view["output"] == {"type": "Order", "order_id": 7}
    assert view["payload"] == {"order_id": 7, "item": "pen"}


async def test_an_omitted_payload_is_an_empty_object(harness: Harness) -> None:
    @job(id=unique_id("omitted"))
    async def omitted(payload: dict[str, Any], io: IO, ctx: Context) -> Any:
        return {"payload": payload, "type": type(payload).__name__}

    await harness.start(omitted)
    run_id = await harness.engine.trigger(omitted.id)
    await harness.engine.wait_for(run_id, 20)
    view = await harness.engine.show_run(run_id)
    assert view["payload"] == {}
    assert view["output"] == {"payload": {}, "type": "dict"}


async def test_an_omitted_payload_is_validated_like_any_other(harness: Harness) -> None:
    @job(id=unique_id("required"))
    async def required(payload: Order, io: IO, ctx: Context) -> None:
        return None

    class Defaults(BaseModel):
        item: str = "pen"

    @job(id=unique_id("defaults"), payload=Defaults)
    async def defaults(payload: Defaults, io: IO, ctx: Context) -> str:
        return payload.item

    await harness.start(required, defaults)
    with pytest.raises(PayloadValidationError, match="order_id: Field required"):
        await harness.engine.trigger(required.id)
    assert await harness.engine.list_runs(required.id) == []
    view = await harness.run(defaults)
    assert (view["payload"], view["output"]) == ({"item": "pen"}, "pen")


async def test_without_the_apps_code_the_registered_schema_validates(harness: Harness) -> None:
    """`Engine.trigger` in a process that has not imported the job (it is not in its registry)
    validates with the JSON schema the worker registered from the annotation."""
    from engine.jobs import registry

    @job(id=unique_id("remote"))
    async def remote(payload: Order, io: IO, ctx: Context) -> int:
        return payload.order_id

    await harness.start(remote)
    # From here on this process knows the job only from the database.
    registry._jobs.pop((remote.id, remote.version))
    with pytest.raises(PayloadValidationError, match="'order_id' is a required property"):
        await harness.engine.trigger(remote.id)
    with pytest.raises(PayloadValidationError, match="order_id: 'x' is not of type 'integer'"):
        await harness.engine.trigger(remote.id, {"order_id": "x"})
    assert await harness.engine.list_runs(remote.id) == []
    run_id = await harness.engine.trigger(remote.id, {"order_id": 3})
    assert (await harness.engine.wait_for(run_id, 20))["output"] == 3
    # A model instance is checked as the JSON it dumps to.
    run_id = await harness.engine.trigger(remote.id, Order(order_id=4))
    assert (await harness.engine.wait_for(run_id, 20))["output"] == 4


# -- forgotten awaits and params advice -----------------------------------------------------------


def _no_unawaited_coroutine_left() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


async def test_a_job_returning_a_coroutine_fails_asking_for_await(harness: Harness) -> None:
    @job(id=unique_id("forgot"))
    async def forgot(payload: Any, io: IO, ctx: Context) -> Any:
        return fetch_total()  # the bug under test: no await

    await harness.start(forgot)
    view = await harness.run(forgot)
    assert view["status"] == "FAILED"
    assert view["output"] is None
    assert view["error"]["type"] == "NotSerializableError"
    assert view["error"]["message"] == (
        "the job's return value: value is a coroutine (fetch_total), not its result: "
        "did you forget `await`?"
    )
    _no_unawaited_coroutine_left()


@pytest.mark.parametrize("shape", ["bare", "nested"])
async def test_a_task_returning_a_coroutine_errors_asking_for_await(
    harness: Harness, shape: str
) -> None:
    calls: list[int] = []

    @job(id=unique_id("forgot-task"))
    async def forgot(payload: Any, io: IO, ctx: Context) -> Any:
        async def total(task: Any) -> Any:
            calls.append(task.attempt)
            return fetch_total() if shape == "bare" else {"totals": [1, fetch_total()]}

        return await io.run_task("total", total)

    await harness.start(forgot)
    view = await harness.run(forgot)
    assert view["status"] == "FAILED" and calls == [1]
    (task,) = view["tasks"]
    assert task["status"] == "ERRORED" and task["output"] is None
    path = "value" if shape == "bare" else 'value["totals"][1]'
    assert task["error"]["message"] == (
        f"io.run_task('total') output: {path} is a coroutine (fetch_total), not its result: "
        "did you forget `await`?"
    )
    _no_unawaited_coroutine_left()


async def test_params_that_cannot_be_recorded_get_advice_about_params(harness: Harness) -> None:
    @job(id=unique_id("params"))
    async def with_params(payload: Any, io: IO, ctx: Context) -> str:
        async def step(task: Any) -> None:
            return None

        try:
            await io.run_task("step", step, params={"when": datetime(2026, 1, 1, tzinfo=UTC)})
        except EngineError as exc:
            return str(exc)
        return "recorded"

    await harness.start(with_params)
    view = await harness.run(with_params)
    message = view["output"]
    assert message.startswith("step('step') params: value[\"when\"] is a datetime")
    assert "params are recorded as given, for inspection" in message
    assert "return type" not in message
    assert view["tasks"] == []


# -- a run's times ------------------------------------------------------------------------------


async def test_started_at_is_never_before_created_at(harness: Harness) -> None:
    """The trigger and the worker stamp a run with their own clocks: a worker whose clock is an
    hour behind the trigger's still records the run as started (and ended) after it was created."""

    @job(id=unique_id("clocks"))
    async def clocks(payload: Any, io: IO, ctx: Context) -> str:
        return "done"

    @job(id=unique_id("canceled"))
    async def never(payload: Any, io: IO, ctx: Context) -> None:
        return None

    await harness.engine.upgrade()
    run_id = await harness.engine.trigger(clocks.id)
    queued = await harness.engine.trigger(never.id)
    clock.advance(-3600)  # from here on, this process is the worker an hour behind
    await harness.start(clocks)
    run = await harness.engine.wait_for(run_id, 20)
    assert run["status"] == "COMPLETED"
    assert run["created_at"] <= run["started_at"] <= run["completed_at"]
    await harness.engine.cancel(queued)
    canceled = await harness.engine.get_run(queued)
    assert canceled["status"] == "CANCELED"
    assert canceled["created_at"] <= canceled["completed_at"]


# -- integrations -------------------------------------------------------------------------------


class Echo:
    def __init__(self, id: str) -> None:
        self.id = id

    def bind(self, io: IO) -> str:
        return f"{self.id} for {io.run_id}"

    def register_pollers(self) -> None:
        pass


async def test_an_integration_is_reached_by_name_and_by_use(harness: Harness) -> None:
    echo, undeclared = Echo("echo"), Echo("other")

    @job(id=unique_id("echo"), integrations={"echo": echo})
    async def echoes(payload: Any, io: IO, ctx: Context) -> dict[str, Any]:
        try:
            io.use(undeclared)
        except EngineError as exc:
            refused = str(exc)
        try:
            io.nothing_here  # noqa: B018
        except AttributeError as exc:
            missing = str(exc)
        return {"name": io.echo, "use": io.use(echo), "refused": refused, "missing": missing}

    await harness.start(echoes)
    view = await harness.run(echoes)
    assert view["status"] == "COMPLETED", view["error"]
    output = view["output"]
    assert output["name"] == output["use"] == f"echo for {view['id']}"
    assert "the job does not declare this integration" in output["refused"]
    assert "io has no attribute 'nothing_here'" in output["missing"]
