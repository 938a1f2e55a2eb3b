"""The fake's routes: one small function per OpenAI endpoint, building OpenAI-shaped JSON."""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .faults import FakeError, not_found
from .state import FakeState, message_content, plain_text, public

FILE_PURPOSES = (
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
)
MODELS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small", "dall-e-3")
EMBEDDING_DIMENSIONS = 8


@dataclass
class Request:
    state: FakeState
    params: dict[str, str]
    body: Any
    query: dict[str, str]
    base_url: str
    form: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise FakeError(400, "The request body must be a JSON object.")
        return self.body

    def require(self, name: str) -> Any:
        value = self.json().get(name)
        if value in (None, ""):
            raise FakeError(
                400,
                f"Missing required parameter: '{name}'.",
                param=name,
                code="missing_required_parameter",
            )
        return value


Handler = Callable[[Request], Any]
ROUTES: list[tuple[str, str, re.Pattern[str], Handler]] = []


def route(method: str, template: str) -> Callable[[Handler], Handler]:
    pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template) + "$")

    def register(fn: Handler) -> Handler:
        ROUTES.append((method, template, pattern, fn))
        return fn

    return register


def match(method: str, path: str) -> tuple[str, Handler | None, dict[str, str]]:
    """Return the route template (``"POST /v1/threads/{thread_id}/runs"``), handler and params.

    An unknown path yields its literal route and no handler; a known path with another method
    yields the template and ``None`` (405)."""
    template_for_path: str | None = None
    # Literal segments win over placeholders: "/v1/threads/runs" before "/v1/threads/{id}".
    for m, template, pattern, fn in sorted(ROUTES, key=lambda r: r[1].count("{")):
        found = pattern.match(path)
        if found:
            if m == method:
                return f"{method} {template}", fn, found.groupdict()
            template_for_path = template_for_path or template
    return f"{method} {template_for_path or path}", None, {}


def paginate(items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """Cursor pagination as the OpenAI list endpoints do it (items in creation order)."""
    try:
        limit = int(query.get("limit", 20))
    except ValueError:
        raise FakeError(400, "limit must be an integer.", param="limit") from None
    if not 1 <= limit <= 100:
        raise FakeError(400, "limit must be between 1 and 100.", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise FakeError(400, "order must be 'asc' or 'desc'.", param="order")
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [item["id"] for item in ordered]
    start, stop = 0, len(ordered)
    if query.get("after") in ids:
        start = ids.index(query["after"]) + 1
    if query.get("before") in ids:
        stop = ids.index(query["before"])
    window = ordered[start:stop]
    if "before" in query and "after" not in query:
        page = window[-limit:]
        has_more = len(window) > limit
    else:
        page = window[:limit]
        has_more = len(window) > limit
    return {
        "object": "list",
        "data": [public(i) for i in page],
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": has_more,
    }


# -- files -------------------------------------------------------------------------------------
@route("POST", "/v1/files")
def create_file(req: Request) -> Any:
    upload = req.form.get("file")
    purpose = req.form.get("purpose")
    if not isinstance(upload, tuple):
        raise FakeError(400, "Missing required parameter: 'file'.", param="file")
    if purpose not in FILE_PURPOSES:
        raise FakeError(400, f"Invalid value for 'purpose': {purpose!r}.", param="purpose")
    filename, content = upload
    return req.state.create_file(filename or "upload", purpose, content)


@route("GET", "/v1/files")
def list_files(req: Request) -> Any:
    return paginate(req.state.list_files(req.query.get("purpose")), req.query)


@route("GET", "/v1/files/{file_id}")
def get_file(req: Request) -> Any:
    return req.state.get_file(req.params["file_id"])


@route("DELETE", "/v1/files/{file_id}")
def delete_file(req: Request) -> Any:
    return req.state.delete_file(req.params["file_id"])


@route("GET", "/v1/files/{file_id}/content")
def file_content(req: Request) -> Any:
    with req.state.lock:
        req.state.get_file(req.params["file_id"])
        return req.state.file_contents.get(req.params["file_id"], b"")


# -- assistants --------------------------------------------------------------------------------
_ASSISTANT_FIELDS = (
    "description",
    "instructions",
    "name",
    "response_format",
    "temperature",
    "tool_resources",
    "top_p",
    "reasoning_effort",
)


@route("POST", "/v1/assistants")
def create_assistant(req: Request) -> Any:
    body = req.json()
    obj = {
        "id": req.state.new_id("asst"),
        "object": "assistant",
        "created_at": int(time.time()),
        "model": req.require("model"),
        "tools": body.get("tools") or [],
        "metadata": body.get("metadata") or {},
    }
    obj.update({k: body.get(k) for k in _ASSISTANT_FIELDS})
    return req.state.put_assistant(obj)


@route("GET", "/v1/assistants")
def list_assistants(req: Request) -> Any:
    with req.state.lock:
        return paginate(list(req.state.assistants.values()), req.query)


@route("GET", "/v1/assistants/{assistant_id}")
def get_assistant(req: Request) -> Any:
    with req.state.lock:
        return public(req.state.get_assistant(req.params["assistant_id"]))


@route("POST", "/v1/assistants/{assistant_id}")
def update_assistant(req: Request) -> Any:
    with req.state.lock:
        obj = req.state.get_assistant(req.params["assistant_id"])
        for key, value in req.json().items():
            if key in (*_ASSISTANT_FIELDS, "model", "tools", "metadata"):
                obj[key] = value
        return public(obj)


@route("DELETE", "/v1/assistants/{assistant_id}")
def delete_assistant(req: Request) -> Any:
    return req.state.delete_assistant(req.params["assistant_id"])


# -- threads and messages ----------------------------------------------------------------------
def _thread_with_messages(state: FakeState, spec: dict[str, Any]) -> dict[str, Any]:
    with state.lock:
        thread = state.create_thread(spec.get("metadata"), spec.get("tool_resources"))
        for msg in spec.get("messages") or []:
            state.add_message(
                thread["id"],
                msg.get("role", "user"),
                msg.get("content", ""),
                attachments=msg.get("attachments"),
                metadata=msg.get("metadata"),
            )
        return public(thread)


@route("POST", "/v1/threads")
def create_thread(req: Request) -> Any:
    return _thread_with_messages(req.state, req.json())


@route("GET", "/v1/threads/{thread_id}")
def get_thread(req: Request) -> Any:
    with req.state.lock:
        return public(req.state.get_thread(req.params["thread_id"]))


@route("POST", "/v1/threads/{thread_id}")
def update_thread(req: Request) -> Any:
    with req.state.lock:
        thread = req.state.get_thread(req.params["thread_id"])
        for key in ("metadata", "tool_resources"):
            if key in req.json():
                thread[key] = req.json()[key]
        return public(thread)


@route("DELETE", "/v1/threads/{thread_id}")
def delete_thread(req: Request) -> Any:
    return req.state.delete_thread(req.params["thread_id"])


@route("POST", "/v1/threads/runs")
def create_thread_and_run(req: Request) -> Any:
    assistant_id = req.require("assistant_id")
    with req.state.lock:
        req.state.get_assistant(assistant_id)
        thread = _thread_with_messages(req.state, req.json().get("thread") or {})
        return req.state.create_run(thread["id"], assistant_id, req.json())


@route("POST", "/v1/threads/{thread_id}/messages")
def create_message(req: Request) -> Any:
    body = req.json()
    role = req.require("role")
    if role not in ("user", "assistant"):
        raise FakeError(400, "role must be 'user' or 'assistant'.", param="role")
    content = body.get("content")
    if content is None or not message_content(content):
        raise FakeError(400, "Missing required parameter: 'content'.", param="content")
    with req.state.lock:
        return public(
            req.state.add_message(
                req.params["thread_id"],
                role,
                content,
                attachments=body.get("attachments"),
                metadata=body.get("metadata"),
            )
        )


@route("GET", "/v1/threads/{thread_id}/messages")
def list_messages(req: Request) -> Any:
    with req.state.lock:
        messages = req.state.thread_messages(req.params["thread_id"])
        if "run_id" in req.query:
            messages = [m for m in messages if m["run_id"] == req.query["run_id"]]
        return paginate(messages, req.query)


@route("GET", "/v1/threads/{thread_id}/messages/{message_id}")
def get_message(req: Request) -> Any:
    with req.state.lock:
        return public(req.state.get_message(req.params["thread_id"], req.params["message_id"]))


@route("POST", "/v1/threads/{thread_id}/messages/{message_id}")
def update_message(req: Request) -> Any:
    with req.state.lock:
        msg = req.state.get_message(req.params["thread_id"], req.params["message_id"])
        if "metadata" in req.json():
            msg["metadata"] = req.json()["metadata"]
        return public(msg)


# -- runs --------------------------------------------------------------------------------------
@route("POST", "/v1/threads/{thread_id}/runs")
def create_run(req: Request) -> Any:
    return req.state.create_run(req.params["thread_id"], req.require("assistant_id"), req.json())


@route("GET", "/v1/threads/{thread_id}/runs")
def list_runs(req: Request) -> Any:
    return paginate(req.state.list_runs(req.params["thread_id"]), req.query)


@route("GET", "/v1/threads/{thread_id}/runs/{run_id}")
def get_run(req: Request) -> Any:
    return req.state.get_run(req.params["thread_id"], req.params["run_id"])


@route("POST", "/v1/threads/{thread_id}/runs/{run_id}")
def update_run(req: Request) -> Any:
    with req.state.lock:
        run = req.state.run_obj(req.params["thread_id"], req.params["run_id"])
        if "metadata" in req.json():
            run["metadata"] = req.json()["metadata"]
        return req.state.get_run(req.params["thread_id"], req.params["run_id"])


@route("POST", "/v1/threads/{thread_id}/runs/{run_id}/cancel")
def cancel_run(req: Request) -> Any:
    return req.state.cancel_run(req.params["thread_id"], req.params["run_id"])


@route("POST", "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs")
def submit_tool_outputs(req: Request) -> Any:
    outputs = req.require("tool_outputs")
    if not isinstance(outputs, list):
        raise FakeError(400, "tool_outputs must be a list.", param="tool_outputs")
    return req.state.submit_tool_outputs(req.params["thread_id"], req.params["run_id"], outputs)


# -- chat, embeddings, images, models ----------------------------------------------------------
def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text")
        )
    return ""


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


@route("POST", "/v1/chat/completions")
def chat_completion(req: Request) -> Any:
    messages = req.require("messages")
    if not isinstance(messages, list):
        raise FakeError(400, "messages must be a list.", param="messages")
    last = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    reply = f"echo: {_text_of(last.get('content')) if last else ''}"
    prompt = sum(_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))
    n = int(req.json().get("n") or 1)
    return {
        "id": req.state.new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": req.require("model"),
        "choices": [
            {
                "index": i,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": reply, "refusal": None},
            }
            for i in range(n)
        ],
        "usage": req.state.chat_usage(prompt, _tokens(reply) * n),
        "system_fingerprint": "fp_fake",
    }


def embedding_for(text: str) -> list[float]:
    """Deterministic vector for ``text``: eight float32 values in [-1, 1) from its SHA-256."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    raw = [
        int.from_bytes(digest[i : i + 4], "big") / 2**31 - 1.0
        for i in range(0, 4 * EMBEDDING_DIMENSIONS, 4)
    ]
    # Round to float32 so the float and base64 encodings decode to the same numbers.
    return list(struct.unpack(f"<{len(raw)}f", struct.pack(f"<{len(raw)}f", *raw)))


@route("POST", "/v1/embeddings")
def embeddings(req: Request) -> Any:
    raw = req.require("input")
    inputs = [raw] if isinstance(raw, str) or (raw and isinstance(raw[0], int)) else list(raw)
    data = []
    for i, item in enumerate(inputs):
        vector = embedding_for(item if isinstance(item, str) else repr(item))
        encoded: Any = vector
        if req.json().get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    tokens = sum(_tokens(x) if isinstance(x, str) else len(x) for x in inputs)
    return {
        "object": "list",
        "data": data,
        "model": req.require("model"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@route("POST", "/v1/images/generations")
def images(req: Request) -> Any:
    req.require("prompt")
    n = int(req.json().get("n") or 1)
    root = req.base_url.rsplit("/v1", 1)[0]
    return {
        "created": int(time.time()),
        "data": [
            {"url": f"{root}/_fake/images/{i}.png", "revised_prompt": None} for i in range(1, n + 1)
        ],
    }


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake-openai"}


@route("GET", "/v1/models")
def list_models(req: Request) -> Any:
    with req.state.lock:
        tuned = list(req.state.tuned_models.values())
    return {"object": "list", "data": [_model(m) for m in MODELS] + tuned}


@route("GET", "/v1/models/{model}")
def get_model(req: Request) -> Any:
    name = req.params["model"]
    with req.state.lock:
        if name in req.state.tuned_models:
            return dict(req.state.tuned_models[name])
    if name not in MODELS:
        raise not_found("model", name)
    return _model(name)


# -- responses ---------------------------------------------------------------------------------
def _response_input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        users = [i for i in value if isinstance(i, dict) and i.get("role", "user") == "user"]
        return _text_of(users[-1].get("content")) if users else ""
    return ""


@route("POST", "/v1/responses")
def create_response(req: Request) -> Any:
    body = req.json()
    model = req.require("model")
    text = f"echo: {_response_input_text(body.get('input'))}"
    state = req.state
    output = [
        {
            "id": state.new_id("msg"),
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]
    usage = state.response_usage(_tokens(_response_input_text(body.get("input"))), _tokens(text))
    obj = {
        "id": state.new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": "in_progress",
        "output": [],
        "usage": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "metadata": body.get("metadata") or {},
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "background": bool(body.get("background")),
        "previous_response_id": body.get("previous_response_id"),
        "max_output_tokens": body.get("max_output_tokens"),
        "completed_at": None,
        "_output": output,
        "_usage": usage,
    }
    return state.put_response(obj)


@route("GET", "/v1/responses/{response_id}")
def get_response(req: Request) -> Any:
    return req.state.get_response(req.params["response_id"])


@route("POST", "/v1/responses/{response_id}/cancel")
def cancel_response(req: Request) -> Any:
    return req.state.cancel_response(req.params["response_id"])


__all__ = ["ROUTES", "Request", "embedding_for", "match", "paginate", "plain_text"]
