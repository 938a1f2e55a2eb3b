"""Params as recorded and as sent: JSON for the log, uploads summarised, v1 `file_ids` upgraded.

The log records the params as the user gave them, minus secrets: `extra_headers` is dropped,
the API key is scrubbed, and an uploaded file is recorded as `{"name", "size", "sha256"}`, never
its bytes. What is sent is the v2 form of the same call (`file_ids` moved to `tool_resources` or
`attachments`, as the seed's v1 API allowed them).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Any

from openai import NotGiven, Omit
from pydantic import BaseModel

from engine import EngineError

from .secrets import scrub

FileInput = str | os.PathLike[str] | bytes | tuple[Any, ...] | IO[bytes]

# Never recorded: headers may carry credentials.
_UNRECORDED = frozenset({"extra_headers"})


def to_json(value: Any) -> Any:
    """A JSON rendering of a param value for the log (best effort for odd objects)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items() if not _omitted(v)}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json(v) for v in value]
    if isinstance(value, bytes | bytearray):
        return {"size": len(value), "sha256": hashlib.sha256(value).hexdigest()}
    return repr(value)


def _omitted(value: Any) -> bool:
    return isinstance(value, NotGiven | Omit)


def record(ids: dict[str, str], params: dict[str, Any], secret: str | None) -> dict[str, Any]:
    """The params of one call as the task log stores them."""
    out = dict(ids)
    for name, value in params.items():
        if name in _UNRECORDED or _omitted(value):
            continue
        out[name] = to_json(value)
    return scrub(out, secret)  # type: ignore[no-any-return]


def check_ids(operation: str, **ids: Any) -> dict[str, str]:
    for name, value in ids.items():
        if not isinstance(value, str) or not value:
            raise EngineError(f"{operation}: {name} must be a non-empty string, got {value!r}")
    return dict(ids)


# -- uploads --------------------------------------------------------------------------------------


class Upload:
    """A file to upload, read once when the call is made: its bytes are sent, its summary
    recorded. A path that cannot be read is reported when the upload is attempted (a replay of
    a recorded upload does not need the file any more)."""

    def __init__(self, file: Any) -> None:
        self.name = "upload"
        self.content: bytes | None = None
        self.content_type: str | None = None
        self.error: str | None = None
        if isinstance(file, bytes | bytearray):
            self.content = bytes(file)
        elif isinstance(file, tuple) and 2 <= len(file) <= 3:
            self.name = str(file[0] or "upload")
            self.content = _read(file[1])
            self.content_type = file[2] if len(file) == 3 else None
        elif isinstance(file, str | os.PathLike):
            path = Path(file)
            self.name = path.name
            try:
                self.content = path.read_bytes()
            except OSError as exc:
                self.error = f"cannot read {str(path)!r}: {exc.strerror or exc}"
        elif hasattr(file, "read"):
            self.name = Path(str(getattr(file, "name", "upload"))).name or "upload"
            self.content = _read(file)
        else:
            raise EngineError(
                f"file={type(file).__name__}: pass a path, bytes, (name, bytes) or a file opened "
                "in binary mode"
            )

    def summary(self) -> dict[str, Any]:
        if self.content is None:
            return {"name": self.name}
        digest = hashlib.sha256(self.content).hexdigest()
        return {"name": self.name, "size": len(self.content), "sha256": digest}

    def to_send(self) -> tuple[Any, ...]:
        if self.content is None:
            raise EngineError(f"files.create: {self.error}")
        if self.content_type:
            return (self.name, self.content, self.content_type)
        return (self.name, self.content)


def _read(source: Any) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, str):
        return source.encode("utf-8")
    if hasattr(source, "read"):
        data = source.read()
        return data.encode("utf-8") if isinstance(data, str) else bytes(data)
    raise EngineError(f"file content {type(source).__name__}: pass bytes or a binary file")


# -- v1 file_ids ----------------------------------------------------------------------------------


def assistant_v2(params: dict[str, Any]) -> dict[str, Any]:
    """`file_ids=[...]` on an assistant -> `tool_resources.code_interpreter.file_ids`."""
    if "file_ids" not in params:
        return params
    out = dict(params)
    file_ids = list(out.pop("file_ids") or [])
    resources = dict(out.get("tool_resources") or {})
    interpreter = dict(resources.get("code_interpreter") or {})
    merged = list(interpreter.get("file_ids") or [])
    merged += [f for f in file_ids if f not in merged]
    interpreter["file_ids"] = merged
    resources["code_interpreter"] = interpreter
    out["tool_resources"] = resources
    return out


def message_v2(message: Any) -> Any:
    """`file_ids=[...]` on a message -> `attachments` for the code interpreter."""
    if not isinstance(message, dict) or "file_ids" not in message:
        return message
    out = dict(message)
    attachments = list(out.get("attachments") or [])
    attached = {a.get("file_id") for a in attachments if isinstance(a, dict)}
    for file_id in out.pop("file_ids") or []:
        if file_id not in attached:
            attachments.append({"file_id": file_id, "tools": [{"type": "code_interpreter"}]})
    out["attachments"] = attachments
    return out


def messages_v2(params: dict[str, Any], field: str) -> dict[str, Any]:
    """Upgrades each message in `params[field]` (threads' `messages`, runs' extra messages)."""
    messages = params.get(field)
    if not isinstance(messages, list | tuple):
        return params
    return {**params, field: [message_v2(m) for m in messages]}


def thread_v2(params: dict[str, Any]) -> dict[str, Any]:
    """Upgrades the messages inside `thread=` (create_and_run)."""
    thread = params.get("thread")
    if not isinstance(thread, dict):
        return params
    return {**params, "thread": messages_v2(thread, "messages")}
