"""The one encoding of every JSON value the engine records, the same on SQLite and PostgreSQL.

Payloads, params, outputs, errors, log fields and poll state all pass through `check` where they
enter the engine and through `dumps` / `loads` on their way to and from the database. A value
`check` accepts comes back exactly, of the same type; a value it cannot store exactly is refused
with one NotSerializableError naming the path inside the value. The rules (docs/concepts.md,
"What can be recorded"):

- JSON data only: dict (str keys), list (tuples become lists), str, int, float, bool, None; a
  pydantic model becomes its JSON dict.
- No NaN or Infinity (JSON has none; PostgreSQL refuses them).
- No NUL ("\\u0000") and no lone surrogate in strings or keys (PostgreSQL text cannot hold them).
- Nesting at most MAX_DEPTH deep; integers at most MAX_INT_DIGITS digits.
- Floats stay floats: PostgreSQL's JSONB prints 1e300 without a decimal point, which would read
  back as an int, so a float written in exponent form (`1e+300`) is written positionally with a
  `.0` instead (`1000...0.0`), which both databases keep as written.
- On SQLite a bare number at the top level is bound as a BLOB (`sqlite_param`): the JSON column
  has NUMERIC affinity and would turn the text `18446744073709551615` into a REAL and `1.0` into
  an INTEGER. A BLOB is stored as given; reads accept bytes, and SQLite's JSON functions read it.

Diagnostic text (log messages, error messages, tracebacks) is never refused: `escape_text`
writes a NUL as the four characters `\\x00` and a lone surrogate as `\\udXXX`.
"""

from __future__ import annotations

import inspect
import json
import math
import sys
from typing import Any

from .exceptions import NotSerializableError

MAX_DEPTH = 200
# Python refuses to print or parse integers of more than 4300 digits by default.
MAX_INT_DIGITS = 4000
_MAX_INT = 10**MAX_INT_DIGITS

JSON_ADVICE = "use JSON data (dict, list, str, int, float, bool, None) or a pydantic model"
# What to do with a value of another type depends on what it was meant to be.
OUTPUT_ADVICE = (
    f"{JSON_ADVICE}, or annotate the task function's return type so the engine can encode it"
)
PARAMS_ADVICE = (
    "params are recorded as given, for inspection (`engine runs show`), and handed to the task "
    "as task.params: pass JSON data (dict, list, str, int, float, bool, None) or a pydantic "
    "model (e.g. str(path), when.isoformat()), and give the task function other objects "
    "through a closure"
)


class _Refused(Exception):
    """Raised inside the walk; the path is collected on the way out, so the walk stays cheap."""

    def __init__(self, reason: str, *, advise: bool = False, awaitable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.advise = advise  # a type the codec does not store: the caller says what to do
        self.awaitable = awaitable
        self.path: list[str] = []


def check(value: Any, where: str, advice: str = JSON_ADVICE) -> Any:
    """`value` as JSON data the task log stores exactly, or NotSerializableError naming the path.

    The caller returns this normalized value on the first execution too, so it and every replay
    agree (a tuple comes back as a list either way). `advice` ends the message when the value
    holds a type the codec cannot store (it depends on what the value is for).
    """
    try:
        return _walk(value, 0)
    except _Refused as refused:
        if refused.awaitable:
            close_coroutines(value)
        path = "value" + "".join(reversed(refused.path))
        message = f"{where}: {path} {refused.reason}"
        raise NotSerializableError(f"{message}; {advice}" if refused.advise else message) from None


def refuse_awaitable(value: Any, where: str) -> None:
    """Raises NotSerializableError if `value` is, or holds, an awaitable (a forgotten `await`),
    closing every coroutine in it so none is reported as never awaited."""
    path = _awaitable_path(value, 0)
    if path is None:
        return
    close_coroutines(value)
    found = value
    for step in path:
        found = found[step]
    text = "value" + "".join(f"[{json.dumps(step)}]" for step in path)
    raise NotSerializableError(f"{where}: {text} {_awaitable_reason(found)}")


def _awaitable_path(value: Any, depth: int) -> list[Any] | None:
    if inspect.isawaitable(value):
        return []
    if depth >= MAX_DEPTH:
        return None
    items: Any = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list | tuple)
        else ()
    )
    for step, item in items:
        inner = _awaitable_path(item, depth + 1)
        if inner is not None:
            return [step, *inner]
    return None


def close_coroutines(value: Any, depth: int = 0) -> None:
    """Closes the coroutines in a refused value: they will never run, and Python would warn
    that they were never awaited."""
    if inspect.iscoroutine(value):
        value.close()
    elif depth < MAX_DEPTH and isinstance(value, dict):
        for item in value.values():
            close_coroutines(item, depth + 1)
    elif depth < MAX_DEPTH and isinstance(value, list | tuple):
        for item in value:
            close_coroutines(item, depth + 1)


def _awaitable_reason(value: Any) -> str:
    what = "a coroutine" if inspect.iscoroutine(value) else f"an awaitable {type(value).__name__}"
    name = getattr(value, "__qualname__", None)
    called = f" ({name})" if isinstance(name, str) else ""
    return f"is {what}{called}, not its result: did you forget `await`?"


def _walk(value: Any, depth: int) -> Any:
    kind = type(value)
    if kind is str:
        if not value.isascii() or "\x00" in value:
            _check_text(value)
        return value
    if kind is int:
        if -_MAX_INT < value < _MAX_INT:
            return value
        raise _Refused(f"is an integer of more than {MAX_INT_DIGITS} digits")
    if kind is float:
        if math.isfinite(value):
            return value
        raise _Refused(f"is {value!r}: JSON has no NaN or Infinity; store None or a string instead")
    if value is None or kind is bool:
        return value
    if depth >= MAX_DEPTH:
        raise _Refused(f"is nested more than {MAX_DEPTH} levels deep; store a flatter value")
    if kind is dict:
        out = {}
        for key, item in value.items():
            if type(key) is not str:
                if not isinstance(key, str):
                    raise _Refused(
                        f"has the key {key!r}, a {type(key).__name__}: the task log stores "
                        "JSON, whose keys are strings"
                    )
                key = str.__str__(key)
            try:
                if not key.isascii() or "\x00" in key:
                    _check_text(key, "key ")
                out[key] = _walk(item, depth + 1)
            except _Refused as refused:
                refused.path.append(f"[{json.dumps(key)}]")
                raise
        return out
    if kind is list or kind is tuple:
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_walk(item, depth + 1))
            except _Refused as refused:
                refused.path.append(f"[{index}]")
                raise
        return items
    return _walk_other(value, depth)


def _walk_other(value: Any, depth: int) -> Any:
    """Subclasses of the JSON types (enums) and pydantic models: the slow, rare path."""
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return _walk(int.__int__(value), depth)
    if isinstance(value, float):
        return _walk(float.__float__(value), depth)
    if isinstance(value, str):
        return _walk(str.__str__(value), depth)
    if isinstance(value, dict):
        return _walk(dict(value), depth)
    if isinstance(value, list | tuple):
        return _walk(list(value), depth)
    # A pydantic model exists only once pydantic is imported; not importing it here keeps
    # `engine runs ...` from paying for it (issue 10, CLI start-up).
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return _walk(value.model_dump(mode="json"), depth)
    if inspect.isawaitable(value):
        raise _Refused(_awaitable_reason(value), awaitable=True)
    raise _Refused(
        f"is a {type(value).__name__}: a {type(value).__name__} cannot be stored in the task log",
        advise=True,
    )


def _check_text(text: str, what: str = "") -> None:
    if "\x00" in text:
        raise _Refused(
            f"{what}holds a NUL character (\\u0000), which PostgreSQL cannot store; "
            "remove it or encode the text (e.g. base64)"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Refused(
            f"{what}holds a lone surrogate ({text[exc.start]!r}), which is not valid Unicode; "
            "decode bytes with errors='replace' or encode them (e.g. base64)"
        ) from None


# -- text in and out -------------------------------------------------------------------------------


# One encoder for every call: json.dumps with arguments builds a new one each time.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def dumps(value: Any) -> str:
    """Compact JSON text of a value `check` accepted; floats keep a decimal point."""
    text = _encode(value)
    if "e+" in text and _has_float(value):
        # Rare: a float printed in exponent form. Write it positionally so it stays a float.
        text = _slow_dumps(value)
    return text


def loads(text: str | bytes | bytearray | int | float) -> Any:
    """The inverse of `dumps`. A bare number is passed through (rows written before `dumps`
    bound top-level numbers as BLOBs on SQLite come back as numbers)."""
    if isinstance(text, int | float):
        return text
    if isinstance(text, bytes | bytearray):
        # A BLOB is a top-level number (sqlite_param). Most are integers: int() reads them
        # directly, where json.loads of bytes first sniffs their encoding and decodes them.
        try:
            return int(text)
        except ValueError:
            return json.loads(text.decode())
    return json.loads(text)


def sqlite_param(value: Any) -> str | bytes:
    """What to bind for a JSON column on SQLite: a bare number goes as a BLOB (see above)."""
    text = dumps(value)
    if type(value) is int or type(value) is float:
        return text.encode()
    return text


def parse_input(text: str, where: str) -> Any:
    """JSON typed by a person (`engine trigger --payload`): the same rules as recorded values."""

    def refuse_constant(name: str) -> Any:
        raise NotSerializableError(f"{where}: {name} is not JSON; give a number or null")

    try:
        value = json.loads(text, parse_constant=refuse_constant)
    except RecursionError:
        raise NotSerializableError(
            f"{where} is nested too deeply: at most {MAX_DEPTH} levels are recorded"
        ) from None
    return check(value, where)


def _has_float(value: Any) -> bool:
    if type(value) is float:
        return True
    if type(value) is dict:
        return any(_has_float(v) for v in value.values())
    if type(value) is list:
        return any(_has_float(v) for v in value)
    return False


def _float_text(value: float) -> str:
    text = repr(value)
    if "e+" not in text:
        return text
    mantissa, exponent = text.split("e+")
    sign = "-" if mantissa.startswith("-") else ""
    whole, _, frac = mantissa.lstrip("-").partition(".")
    digits = whole + frac
    return sign + digits + "0" * (int(exponent) - len(frac)) + ".0"


def _slow_dumps(value: Any) -> str:
    if type(value) is float:
        return _float_text(value)
    if type(value) is dict:
        items = (f"{json.dumps(k)}:{_slow_dumps(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if type(value) is list:
        return "[" + ",".join(_slow_dumps(v) for v in value) + "]"
    return json.dumps(value, allow_nan=False)


# -- diagnostic text -------------------------------------------------------------------------------


def escape_text(text: str) -> str:
    """Text for the record that is never refused: NUL becomes `\\x00`, a lone surrogate its
    `\\udXXX` escape (log messages, error messages, tracebacks)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    return text
