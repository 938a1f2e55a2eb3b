"""engine.codec: the one encoding of recorded values (the database round trips are in
tests/integration/core/test_values.py)."""

from __future__ import annotations

import json
import math
import sqlite3
from enum import Enum, IntEnum
from typing import Any

import pytest

from engine import NotSerializableError, codec, limits
from engine.exceptions import EngineError


class Color(str, Enum):  # noqa: UP042 (a str mixin, whose str() is not its value)
    RED = "red"


class Level(IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ({"a": [0, 1, math.nan]}, 'value["a"][2] is nan'),
        (math.inf, "value is inf"),
        ([{"x": -math.inf}], 'value[0]["x"] is -inf'),
        ({"s": "a\x00"}, 'value["s"] holds a NUL'),
        ({"k\x00": 1}, 'value["k\\u0000"] key holds a NUL'),
        ({"k\ud800": 1}, "key holds a lone surrogate"),
        (["\udc80"], "value[0] holds a lone surrogate"),
        ({1: "a"}, "has the key 1, a int"),
        ({"s": {1, 2}}, 'value["s"] is a set'),
        (10**4001, "more than 4000 digits"),
    ],
)
def test_check_refuses_with_the_path_inside_the_value(value: Any, path: str) -> None:
    with pytest.raises(NotSerializableError) as info:
        codec.check(value, "io.run_task('k') output")
    assert str(info.value).startswith("io.run_task('k') output: ")
    assert path in str(info.value)


def test_deep_nesting_is_a_clear_error_not_a_recursion_error() -> None:
    value: Any = 0
    for _ in range(100_000):
        value = [value]
    with pytest.raises(NotSerializableError, match="nested more than 200 levels"):
        codec.check(value, "x")
    shallow: Any = 0
    for _ in range(200):
        shallow = {"a": shallow}
    assert codec.check(shallow, "x") == shallow


def test_check_normalizes_to_plain_json_types() -> None:
    out = codec.check({"t": (1, 2), "c": Color.RED, "l": Level.HIGH, "b": True}, "x")
    assert out == {"t": [1, 2], "c": "red", "l": 3, "b": True}
    assert type(out["c"]) is str and type(out["l"]) is int and out["b"] is True


EXACT = [
    2**70,
    -(2**70),
    2**64 - 1,
    1e300,
    1.5e20,
    1e16,
    -1.7976931348623157e308,
    5e-324,
    1.0,
    0.1,
    [1e300, {"x": 1.2345678901234567e16}],
    "e+ in a string, 1e+300",
]


@pytest.mark.parametrize("value", EXACT, ids=repr)
def test_dumps_loads_is_exact_and_floats_keep_a_decimal_point(value: Any) -> None:
    text = codec.dumps(value)
    back = codec.loads(text)
    assert repr(back) == repr(value)
    assert "e+" not in text or isinstance(value, str)


@pytest.mark.parametrize("value", [2**64 - 1, 1.0, 1e300, -5, [2**70]], ids=repr)
def test_sqlite_keeps_top_level_numbers_exact(value: Any) -> None:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (j JSON)")  # NUMERIC affinity, as the engine's JSON columns
    db.execute("INSERT INTO t VALUES (?)", (codec.sqlite_param(value),))
    stored, extracted = db.execute("SELECT j, json_extract(j, '$') FROM t").fetchone()
    assert repr(codec.loads(stored)) == repr(value)
    assert extracted is not None  # SQLite's JSON functions read it


def test_parse_input_refuses_what_json_loads_lets_through() -> None:
    with pytest.raises(NotSerializableError, match="NaN is not JSON"):
        codec.parse_input('{"a": NaN}', "--payload")
    with pytest.raises(NotSerializableError, match="nested too deeply"):
        codec.parse_input("[" * 100_000 + "]" * 100_000, "--payload")
    with pytest.raises(json.JSONDecodeError):
        codec.parse_input("{", "--payload")
    assert codec.parse_input('{"n": 18446744073709551615}', "--payload") == {"n": 2**64 - 1}


def test_escape_text_writes_nul_and_lone_surrogates_as_escapes() -> None:
    assert codec.escape_text("a\x00b") == "a\\x00b"
    assert codec.escape_text("x\ud800y ☃") == "x\\ud800y ☃"
    assert codec.escape_text("plain") == "plain"
    codec.escape_text("x\ud800\x00").encode("utf-8")  # always valid UTF-8 afterwards


def test_limits_on_keys_and_durations() -> None:
    assert limits.check_text("k" * 500, "key", limits.MAX_KEY_LENGTH) == "k" * 500
    for bad in ("", "k" * 501, "a\x00", "\ud800", 3):
        with pytest.raises(EngineError):
            limits.check_text(bad, "key", limits.MAX_KEY_LENGTH)
    with pytest.raises(EngineError, match="control"):
        limits.check_text("a\tb", "key", 500, control=True)
    assert limits.check_seconds(0, "wait", limits.MAX_WAIT_SECONDS) == 0.0
    for bad_seconds in (math.inf, math.nan, -1, 1e12, True, "1"):
        with pytest.raises(EngineError):
            limits.check_seconds(bad_seconds, "wait", limits.MAX_WAIT_SECONDS)
    with pytest.raises(EngineError):
        limits.check_seconds(0, "timeout", limits.MAX_TASK_TIMEOUT, zero=False)
