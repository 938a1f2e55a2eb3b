from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import BaseModel

from engine import NotSerializableError, TaskError
from engine.serialization import decode, decode_error, encode, encode_error


class Item(BaseModel):
    name: str
    at: datetime


def test_plain_json_round_trips_and_tuples_become_lists() -> None:
    value, type_name = encode({"a": (1, 2), "b": [None, True, 1.5, "x"]}, "here")
    assert value == {"a": [1, 2], "b": [None, True, 1.5, "x"]} and type_name is None
    assert decode(value, type_name) == value


def test_a_top_level_model_comes_back_as_its_class() -> None:
    item = Item(name="pen", at=datetime(2026, 1, 2, tzinfo=UTC))
    value, type_name = encode(item, "here")
    assert value == {"name": "pen", "at": "2026-01-02T00:00:00Z"}
    back = decode(value, type_name)
    assert type(back) is Item and back == item


def test_an_annotation_rebuilds_nested_types() -> None:
    items = [Item(name="a", at=datetime(2026, 1, 1, tzinfo=UTC))]
    value, _ = encode(items, "here", list[Item])
    assert decode(value, None, list[Item]) == items
    stamp = datetime(2026, 5, 1, 12, tzinfo=UTC)
    value, _ = encode(stamp, "here", datetime)
    assert decode(value, None, datetime) == stamp


@pytest.mark.parametrize("bad", [object(), {1: "int key"}, {"s": {1, 2}}, b"bytes"])
def test_values_json_cannot_hold_are_refused_naming_the_call(bad: object) -> None:
    with pytest.raises(NotSerializableError, match=r"io.run_task\('k'\) output"):
        encode(bad, "io.run_task('k') output")


def test_errors_rebuild_as_their_own_type_with_the_traceback_as_a_note() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        recorded = encode_error(exc)
    assert recorded["type"] == "ValueError" and recorded["message"] == "bad value"
    rebuilt = decode_error(recorded)
    assert type(rebuilt) is ValueError and str(rebuilt) == "bad value"
    assert "raise ValueError" in "".join(rebuilt.__notes__)


def test_an_unknown_error_type_becomes_a_task_error() -> None:
    rebuilt = decode_error({"type": "Gone", "module": "no.such.module", "message": "m"})
    assert isinstance(rebuilt, TaskError) and rebuilt.type == "Gone" and str(rebuilt) == "m"


def test_engine_error_details_survive() -> None:
    from engine import EngineError

    class ApiError(EngineError):
        pass

    recorded = encode_error(ApiError("rate limited", status_code=429))
    assert recorded["status_code"] == 429
