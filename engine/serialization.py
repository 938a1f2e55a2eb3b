"""What may be stored in the task log, and how it comes back out exactly.

Values are stored as JSON. A value is encoded with its declared type when one is known (a task
function's return annotation, through pydantic's `TypeAdapter`), else it must be plain JSON or a
pydantic model, whose class is recorded beside it so replay rebuilds the same type.
"""

from __future__ import annotations

import importlib
import traceback
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, TypeAdapter

from . import secrets
from .exceptions import EngineError, NotSerializableError, TaskError

_JSON_SCALARS = (str, int, float, bool, type(None))


def _plain(value: Any, where: str) -> Any:
    """`value` as JSON data (tuples become lists), or NotSerializableError naming `where`.

    The first execution returns this normalized value too, so it and every replay agree.
    """
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item, where) for item in value]
    if isinstance(value, dict):
        out = {}
        for k, item in value.items():
            if not isinstance(k, str):
                raise NotSerializableError(
                    f"{where}: dict key {k!r} is a {type(k).__name__}; "
                    "the task log stores JSON, whose keys are strings"
                )
            out[k] = _plain(item, where)
        return out
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise NotSerializableError(
        f"{where}: a {type(value).__name__} cannot be stored in the task log; "
        "return JSON-compatible data (dict, list, str, int, float, bool, None) or a pydantic "
        "model, or annotate the function's return type so the engine can encode it"
    )


def type_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


@lru_cache(maxsize=512)
def _import_type(name: str) -> type:
    module, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


@lru_cache(maxsize=512)
def _adapter(annotation: Any) -> TypeAdapter[Any]:
    return TypeAdapter(annotation)


def encode(value: Any, where: str, annotation: Any = None) -> tuple[Any, str | None]:
    """Returns (json_value, type_name) or raises NotSerializableError naming `where`."""
    if annotation is not None:
        try:
            return _adapter(annotation).dump_python(value, mode="json"), None
        except Exception as exc:
            raise NotSerializableError(
                f"{where}: the value does not match the declared type {annotation!r}: {exc}"
            ) from exc
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json"), type_name(type(value))
    return _plain(value, where), None


def decode(value: Any, type_name_: str | None, annotation: Any = None) -> Any:
    """The inverse of `encode`: the same type comes back."""
    if annotation is not None:
        return _adapter(annotation).validate_python(value)
    if type_name_:
        cls = _import_type(type_name_)
        if issubclass(cls, BaseModel):
            return cls.model_validate(value)
    return value


def check_params(params: Any, where: str) -> Any:
    """Params are recorded as given; they must be JSON already (or a pydantic model)."""
    return _plain(params, where)


# -- errors ---------------------------------------------------------------------------------------


def encode_error(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    error: dict[str, Any] = {
        "type": cls.__qualname__,
        "message": str(exc),
        "module": cls.__module__,
        "traceback": "".join(traceback.format_exception(exc)),
    }
    # Plain attributes an integration's error carries (status code, request id) survive replay.
    for attr, value in getattr(exc, "details", {}).items():
        if isinstance(value, _JSON_SCALARS) and attr not in error:
            error[attr] = value
    # Last: whatever the error says, no secret the engine knows is recorded (INVARIANTS 8).
    return secrets.scrub(error)  # type: ignore[no-any-return]


_BASE_KEYS = {"type", "message", "module", "traceback"}


def decode_error(error: dict[str, Any]) -> Exception:
    """Rebuilds a recorded exception as its own type where that is possible, else a TaskError."""
    message = str(error.get("message", ""))
    extras = {k: v for k, v in error.items() if k not in _BASE_KEYS}
    exc: Exception | None = None
    try:
        cls = _import_type(f"{error.get('module', 'builtins')}:{error.get('type', '')}")
        if isinstance(cls, type) and issubclass(cls, Exception):
            exc = cls.__new__(cls)
            Exception.__init__(exc, message)
            if isinstance(exc, EngineError):
                exc.message, exc.details = message, extras
            for attr, value in extras.items():
                setattr(exc, attr, value)
    except Exception:
        exc = None
    if exc is None:
        exc = TaskError(message, type=str(error.get("type", "")), **extras)
    if error.get("traceback"):
        exc.add_note("Traceback recorded when the task ran:\n" + str(error["traceback"]))
    return exc
