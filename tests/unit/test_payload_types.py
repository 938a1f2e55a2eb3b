"""The payload's type: `payload=` or the payload parameter's annotation, the same either way.

This module uses `from __future__ import annotations`, so every annotation below is a string
the engine has to resolve, some of them naming classes defined inside the test function.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel
from support import unique_id
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from engine import IO, Context, EngineError, PayloadValidationError, job
from engine.jobs import check_against_schema


class Order(BaseModel):
    order_id: int
    item: str = "pen"


class Refund(BaseModel):
    order_id: int


class Point(TypedDict):
    x: int
    y: int


@dataclasses.dataclass
class Box:
    width: float


def test_an_annotated_model_validates_like_payload_equals() -> None:
    @job(id=unique_id("annotated"))
    async def annotated(payload: Order, io: IO, ctx: Context) -> None:
        return None

    assert annotated.check_payload({"order_id": "7"}) == {"order_id": 7, "item": "pen"}
    with pytest.raises(PayloadValidationError, match="order_id: Input should be a valid integer"):
        annotated.check_payload({"order_id": "x"})
    loaded = annotated.load_payload({"order_id": 7, "item": "pen"})
    assert isinstance(loaded, Order) and loaded.order_id == 7
    # What a worker registers, and what `engine trigger` checks without the app's code.
    schema = annotated.payload_schema()
    assert schema is not None and schema["required"] == ["order_id"]
    with pytest.raises(PayloadValidationError, match="'order_id' is a required property"):
        check_against_schema(annotated.id, {}, schema)


def test_the_same_job_declared_with_payload_equals() -> None:
    @job(id=unique_id("explicit"), payload=Order)
    async def explicit(payload: Any, io: IO, ctx: Context) -> None:
        return None

    @job(id=unique_id("annotated"))
    async def annotated(payload: Order, io: IO, ctx: Context) -> None:
        return None

    assert explicit.payload_schema() == annotated.payload_schema()


def test_a_model_defined_in_the_declaring_function_resolves() -> None:
    class Local(BaseModel):
        n: int

    @job(id=unique_id("local"))
    async def local(payload: Local, io: IO, ctx: Context) -> None:
        return None

    assert isinstance(local.load_payload({"n": 1}), Local)
    with pytest.raises(PayloadValidationError, match="n: Field required"):
        local.check_payload({})


def test_typed_dict_and_dataclass_payloads() -> None:
    @job(id=unique_id("point"))
    async def point(payload: Point, io: IO, ctx: Context) -> None:
        return None

    @job(id=unique_id("box"))
    async def box(payload: Box, io: IO, ctx: Context) -> None:
        return None

    assert point.check_payload({"x": 1, "y": "2"}) == {"x": 1, "y": 2}
    with pytest.raises(PayloadValidationError, match="y: Field required"):
        point.check_payload({"x": 1})
    assert box.check_payload({"width": 2}) == {"width": 2.0}
    assert box.load_payload({"width": 2.0}) == Box(2.0)
    with pytest.raises(PayloadValidationError, match="width"):
        box.check_payload({"width": "wide"})


async def _no_annotation(payload, io, ctx):  # type: ignore[no-untyped-def]
    return None


async def _bare_dict(payload: dict, io: IO, ctx: Context) -> None:  # type: ignore[type-arg]
    return None


async def _dict_str_any(payload: dict[str, Any], io: IO, ctx: Context) -> None:
    return None


async def _any(payload: Any, io: IO, ctx: Context) -> None:
    return None


async def _object(payload: object, io: IO, ctx: Context) -> None:
    return None


UNCHECKED = {
    "none": _no_annotation,
    "dict": _bare_dict,
    "dict_str_any": _dict_str_any,
    "any": _any,
    "object": _object,
}


@pytest.mark.parametrize("kind", list(UNCHECKED))
def test_dict_any_and_no_annotation_declare_no_type(kind: str) -> None:
    declared = job(id=unique_id(f"untyped-{kind}"))(UNCHECKED[kind])
    assert declared.payload_schema() is None
    assert declared.check_payload({"anything": [1, "x"]}) == {"anything": [1, "x"]}
    assert declared.load_payload({"a": 1}) == {"a": 1}


def test_payload_equals_and_a_disagreeing_annotation_are_refused() -> None:
    with pytest.raises(EngineError) as caught:

        @job(id="disagree", payload=Refund)
        async def disagree(payload: Order, io: IO, ctx: Context) -> None:
            return None

    message = str(caught.value)
    assert "payload=Refund" in message and "payload: Order" in message
    assert "test_payload_equals_and_a_disagreeing_annotation_are_refused" in message
    assert "annotate `payload: Refund`" in message
    # A dict annotation disagrees too: the job would receive a Refund.
    with pytest.raises(EngineError, match="payload: dict"):

        @job(id="disagree-dict", payload=Refund)
        async def as_dict(payload: dict[str, Any], io: IO, ctx: Context) -> None:
            return None


def test_payload_equals_with_an_agreeing_annotation() -> None:
    @job(id=unique_id("agree"), payload=Order)
    async def same(payload: Order, io: IO, ctx: Context) -> None:
        return None

    @job(id=unique_id("base"), payload=Order)
    async def base(payload: BaseModel, io: IO, ctx: Context) -> None:
        return None

    assert same.payload_schema() == base.payload_schema() == Order.model_json_schema()


def test_an_annotation_that_cannot_be_resolved_is_refused() -> None:
    with pytest.raises(EngineError) as caught:

        @job(id="unresolved")
        async def unresolved(payload: NotDefinedAnywhere, io: IO, ctx: Context) -> None:  # type: ignore[name-defined]  # noqa: F821
            return None

    message = str(caught.value)
    assert "'NotDefinedAnywhere'" in message and "payload=" in message


def test_an_annotation_pydantic_cannot_validate_is_refused() -> None:
    class Opaque:
        pass

    with pytest.raises(EngineError, match="is not a payload type"):

        @job(id="opaque")
        async def opaque(payload: Opaque, io: IO, ctx: Context) -> None:
            return None


def test_io_and_ctx_annotations_are_not_resolved() -> None:
    """Only the payload's annotation is: `io: "IO"` under TYPE_CHECKING must keep working."""

    @job(id=unique_id("lazy"))
    async def lazy(payload: Order, io: UnimportedIO, ctx: UnimportedContext) -> None:  # type: ignore[name-defined]  # noqa: F821
        return None

    assert lazy.payload_schema() == Order.model_json_schema()
