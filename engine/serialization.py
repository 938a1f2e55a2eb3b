"""What may be stored in the task log, and how it comes back out exactly.

Values are stored as JSON. A value is encoded with its declared type when one is known (a task
function's return annotation, through pydantic's `TypeAdapter`), else it must be plain JSON or a
pydantic model, whose class is recorded beside it so replay rebuilds the same type.
"""

from __future__ import annotations

import importlib
import math
import traceback
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, TypeAdapter

from . import codec, secrets
from .exceptions import DivergenceError, EngineError, NotSerializableError, TaskError

_JSON_SCALARS = (str, int, float, bool, type(None))


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
            dumped = _adapter(annotation).dump_python(value, mode="json")
        except Exception as exc:
            codec.refuse_awaitable(value, where)
            raise NotSerializableError(
                f"{where}: the value does not match the declared type {annotation!r}: {exc}"
            ) from exc
        return codec.check(dumped, where), None
    if isinstance(value, BaseModel):
        cls = type(value)
        if not _rebuildable(cls):
            raise NotSerializableError(
                f"{where}: {cls.__qualname__} cannot be rebuilt on replay, because "
                f"{type_name(cls)} does not import back to this class; define the class at "
                "module level, or annotate the task function's return type"
            )
        return codec.check(value.model_dump(mode="json"), where), type_name(cls)
    return codec.check(value, where, codec.OUTPUT_ADVICE), None


@lru_cache(maxsize=512)
def _rebuildable(cls: type) -> bool:
    """Whether replay can find `cls` again by its recorded name (not a class made in a function)."""
    if "<locals>" in cls.__qualname__:
        return False
    try:
        return _import_type(type_name(cls)) is cls
    except Exception:
        return False


def decode(value: Any, type_name_: str | None, annotation: Any = None) -> Any:
    """The inverse of `encode`: the same type comes back."""
    if annotation is not None:
        return _adapter(annotation).validate_python(value)
    if type_name_:
        try:
            cls = _import_type(type_name_)
        except Exception as exc:
            raise DivergenceError(
                f"the recorded value has type {type_name_}, which cannot be imported now "
                f"({type(exc).__name__}: {exc}): the code no longer matches what this run "
                "recorded; restore the class, or finish the run on a worker with the old version"
            ) from None
        if isinstance(cls, type) and issubclass(cls, BaseModel):
            return cls.model_validate(value)
    return value


def check_params(params: Any, where: str) -> Any:
    """Params are recorded as given; they must be JSON already (or a pydantic model)."""
    return codec.check(params, where, codec.PARAMS_ADVICE)


# -- errors ---------------------------------------------------------------------------------------


def encode_error(exc: BaseException) -> dict[str, Any]:
    cls = type(exc)
    error: dict[str, Any] = {
        "type": cls.__qualname__,
        "message": codec.escape_text(str(exc)),
        "module": cls.__module__,
        "traceback": codec.escape_text("".join(traceback.format_exception(exc))),
    }
    # Plain attributes an integration's error carries (status code, request id) survive replay.
    for attr, value in getattr(exc, "details", {}).items():
        if isinstance(value, _JSON_SCALARS) and attr not in error:
            if isinstance(value, str):
                value = codec.escape_text(value)
            elif isinstance(value, float) and not math.isfinite(value):
                value = repr(value)
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
