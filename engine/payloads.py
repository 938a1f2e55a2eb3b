"""The payload a job accepts: its declared type, found once when the job is declared.

A job declares its payload type with `@job(..., payload=Order)` or by annotating its first
parameter (`async def f(payload: Order, io, ctx)`); both mean the same. The type validates the
payload when a run is triggered (through pydantic's `TypeAdapter`, so a model, a TypedDict or a
dataclass), its JSON schema is what a worker registers (so `engine trigger` validates without the
app's code), and the job receives the validated value (an `Order`, not a dict). `Any`, `object`,
`dict` and `dict[str, Any]` (or no annotation) declare no type: the payload is passed as stored.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .exceptions import EngineError, PayloadValidationError

if TYPE_CHECKING:
    from pydantic import TypeAdapter, ValidationError

# pydantic is imported only where a job declares a payload type: a worker whose jobs take plain
# JSON, and `engine trigger` of such a job, skip its import (about 0.15 s of CPU per process).

_MAPPINGS = (dict, Mapping, MutableMapping)


@dataclass(frozen=True)
class PayloadType:
    """A declared payload type and the validator built from it."""

    annotation: Any
    adapter: TypeAdapter[Any]
    json_schema: dict[str, Any]

    def schema(self) -> dict[str, Any]:
        return self.json_schema

    def check(self, job_id: str, payload: Any) -> Any:
        """The payload as it will be stored (JSON data), or PayloadValidationError."""
        from pydantic import ValidationError

        try:
            return self.adapter.dump_python(self.adapter.validate_python(payload), mode="json")
        except ValidationError as exc:
            raise PayloadValidationError(
                f"payload for job {job_id!r} is invalid: {short(exc)}"
            ) from None

    def load(self, stored: Any) -> Any:
        """The value the job receives, rebuilt from what was stored."""
        return self.adapter.validate_python(stored)


def short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "payload"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def declared(
    job_id: str, fn: Any, given: Any, namespace: Mapping[str, Any] | None = None
) -> PayloadType | None:
    """The payload type of `fn` from `payload=` (`given`) and its first parameter's annotation.

    `namespace` holds the names visible where the job is declared (a model defined in a
    function), for annotations written as strings (`from __future__ import annotations`).
    """
    name, raw = _first_parameter(fn)
    resolved, unresolved = _resolve(fn, raw, namespace)
    if given is not None:
        if not unresolved and not _agree(given, resolved):
            raise EngineError(
                f"@job({job_id!r}, payload={_name(given)}) decorates {_where(fn)}, which "
                f"annotates its payload as `{name}: {_name(resolved)}`: the job receives a "
                f"{_name(given)}; annotate `{name}: {_name(given)}`, or drop one of the two"
            )
        return _build(job_id, given, "payload=")
    if unresolved:
        raise EngineError(
            f"@job({job_id!r}) decorates {_where(fn)}, whose payload annotation {raw!r} cannot "
            f"be resolved ({unresolved}): define it before the job, at module level, or pass "
            f"@job(..., payload=...)"
        )
    if _unchecked(resolved):
        return None
    return _build(job_id, resolved, f"the annotation of `{name}`")


def _first_parameter(fn: Any) -> tuple[str, Any]:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return "payload", inspect.Parameter.empty
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        return "payload", inspect.Parameter.empty
    return params[0].name, params[0].annotation


def _resolve(fn: Any, raw: Any, namespace: Mapping[str, Any] | None) -> tuple[Any, str]:
    """(the annotation as a type, "") or (None, why it cannot be resolved)."""
    if raw is inspect.Parameter.empty:
        return None, ""
    if not isinstance(raw, str):
        return raw, ""
    # Only the payload's annotation is resolved: `io: "IO"` imported under TYPE_CHECKING is fine.
    probe = SimpleNamespace(__annotations__={"payload": raw})
    try:
        hints = typing.get_type_hints(
            probe, globalns=getattr(fn, "__globals__", {}), localns=dict(namespace or {})
        )
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return hints["payload"], ""


def _unchecked(annotation: Any) -> bool:
    """Whether an annotation declares no payload type (any JSON object is accepted as is)."""
    if annotation is None or annotation is Any or annotation is object:
        return True
    if annotation in _MAPPINGS:
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) in _MAPPINGS and (not args or args[-1] is Any)


def _agree(given: Any, annotation: Any) -> bool:
    if annotation is None or annotation is Any or annotation is object or annotation == given:
        return True
    classes = isinstance(annotation, type) and isinstance(given, type)
    return classes and issubclass(given, annotation)


def _build(job_id: str, annotation: Any, source: str) -> PayloadType:
    from pydantic import TypeAdapter
    from pydantic.errors import PydanticUserError

    try:
        adapter: TypeAdapter[Any] = TypeAdapter(annotation)
        schema = adapter.json_schema()
    except (PydanticUserError, TypeError, ValueError) as exc:
        raise EngineError(
            f"@job({job_id!r}): {source} ({_name(annotation)}) is not a payload type: use a "
            f"pydantic model, a TypedDict or a dataclass of JSON data, or dict / Any for no "
            f"validation ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    return PayloadType(annotation, adapter, schema)


def _name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "")


def _where(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
