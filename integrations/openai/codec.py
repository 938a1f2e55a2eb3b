"""How openai-python objects are recorded and rebuilt.

A response is recorded as `model_dump(mode="json")` beside a type name: `module:Class` for a
model, `module:Page[module:Item]` for a page (`AsyncCursorPage[Message]`), `list[module:Item]`
for `list_all`. Decoding rebuilds it the way the openai client parses responses (leniently, with
`construct_type`), so the first execution and every replay return the same type and value: both
go through `decode`. A rebuilt page has no client attached: use `list(..., after=...)` or
`list_all` to read further pages durably.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any, TypeVar

from openai._models import construct_type
from pydantic import BaseModel

from engine import NotSerializableError

from .secrets import scrub

M = TypeVar("M", bound=BaseModel)


def _name(cls: type) -> str:
    meta = getattr(cls, "__pydantic_generic_metadata__", None) or {}
    origin, args = meta.get("origin"), meta.get("args") or ()
    if origin is not None and args:
        return f"{_name(origin)}[{','.join(_name(a) for a in args)}]"
    return f"{cls.__module__}:{cls.__qualname__}"


def encode(value: Any, secret: str | None, where: str) -> tuple[Any, str | None]:
    """(json, type name) for a model, a page, a list of models, or plain JSON."""
    if isinstance(value, BaseModel):
        return scrub(value.model_dump(mode="json"), secret), _name(type(value))
    if isinstance(value, list) and value and all(isinstance(v, BaseModel) for v in value):
        item = type(value[0])
        if all(type(v) is item for v in value):
            dumped = [v.model_dump(mode="json") for v in value]
            return scrub(dumped, secret), f"list[{_name(item)}]"
    if isinstance(value, list | dict | str | int | float | bool) or value is None:
        return scrub(value, secret), None
    raise NotSerializableError(f"{where}: cannot record a {type(value).__name__}")


def decode(value: Any, type_name: str | None) -> Any:
    """The inverse of `encode`: the same openai type comes back."""
    if not type_name:
        return value
    if type_name.startswith("list[") and type_name.endswith("]"):
        item = resolve(type_name[5:-1])
        return [build(v, item) for v in value or []]
    return build(value, resolve(type_name))


def build(value: Any, cls: type[M]) -> M:
    """`value` (recorded JSON) as an instance of the openai model `cls`."""
    return construct_type(value=value, type_=cls)  # type: ignore[return-value]


@lru_cache(maxsize=256)
def resolve(type_name: str) -> type:
    """The class a type name written by `encode` names (parametrized pages included)."""
    if type_name.endswith("]") and "[" in type_name:
        origin, _, args = type_name[:-1].partition("[")
        params = tuple(resolve(a) for a in _split(args))
        generic: Any = resolve(origin)
        return generic[params if len(params) > 1 else params[0]]  # type: ignore[no-any-return]
    module, _, qualname = type_name.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise NotSerializableError(f"recorded type {type_name!r} is not a class")
    return obj


def _split(args: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(args):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(args[start:i])
            start = i + 1
    out.append(args[start:])
    return out
