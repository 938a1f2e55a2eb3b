"""In-memory model behind the fake OpenAI server.

Everything the fake knows lives in one :class:`FakeState` guarded by one lock: stored objects
(files, assistants, threads, messages, runs, responses), the request log, injected faults and
the hooks tests use to steer outcomes. Statuses advance with a monotonic clock and are evaluated
whenever an object is read, so there is no background thread and a test only has to wait.

A test that must see an object *still in progress* holds its kind (:meth:`FakeState.hold`):
while held, runs stay ``in_progress``, files ``uploaded`` and background responses
``in_progress`` however long the test takes; after :meth:`FakeState.release` the next read
finishes them. No assertion then depends on how fast the machine is.
"""

from __future__ import annotations

import copy
import itertools
import threading
import time
from typing import Any

from .faults import FakeError, Fault, RecordedRequest, not_found, redact, route_matches
from .limits import Account

TERMINAL_RUN_STATUSES = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
TERMINAL_RESPONSE_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})
HOLD_KINDS = frozenset({"runs", "files", "responses", "fine_tuning", "streams"})


class FakeState:
    """Objects, clocks, the request log and faults. Every public method takes the lock."""

    def __init__(
        self,
        *,
        run_seconds: float = 0.2,
        file_seconds: float = 0.1,
        response_seconds: float = 0.2,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
    ) -> None:
        self.account = Account(requests_per_minute, tokens_per_minute)
        self.run_seconds = run_seconds
        self.file_seconds = file_seconds
        self.response_seconds = response_seconds
        self.lock = threading.RLock()
        # Streamed answers paused by a hold on "streams" wait on it (engine tests read the
        # first chunks while the call is in progress); a release or a reset wakes them.
        self.released = threading.Condition(self.lock)
        self.paused_streams = 0
        # Streamed answers still to be cut off half-way (the connection closed mid-stream).
        self.cuts = 0
        self._mono0 = time.monotonic()
        self._wall0 = time.time()
        self.clear()

    def clear(self) -> None:
        with self.lock:
            self.requests: list[RecordedRequest] = []
            self.faults: list[Fault] = []
            self.files: dict[str, dict[str, Any]] = {}
            self.file_contents: dict[str, bytes] = {}
            self.assistants: dict[str, dict[str, Any]] = {}
            self.threads: dict[str, dict[str, Any]] = {}
            self.messages: dict[str, dict[str, dict[str, Any]]] = {}
            self.runs: dict[str, dict[str, dict[str, Any]]] = {}
            self.responses: dict[str, dict[str, Any]] = {}
            self.fine_tunes: dict[str, dict[str, Any]] = {}
            self.fine_tune_events: dict[str, list[dict[str, Any]]] = {}
            # Models made by fine-tuning jobs that succeeded (deletable, unlike the base ones).
            self.tuned_models: dict[str, dict[str, Any]] = {}
            self.next_fine_tune_status: str | None = None
            self.next_file_status: str | None = None
            self.next_run_status: str | None = None
            self.next_response_status: str | None = None
            self.held: set[str] = set()
            self._ids = itertools.count(1)
            self.released.notify_all()

    # -- clocks and ids ------------------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic()

    def wall(self, mono: float) -> int:
        return int(self._wall0 + (mono - self._mono0))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):06d}fake"

    # -- request log and faults ----------------------------------------------------------------
    def record(
        self,
        method: str,
        path: str,
        route: str,
        headers: dict[str, str],
        body: Any,
        query: dict[str, str],
    ) -> RecordedRequest:
        key = next((v for k, v in headers.items() if k.lower() == "idempotency-key"), None)
        rec = RecordedRequest(method, path, route, key, redact(headers), body, dict(query))
        with self.lock:
            self.requests.append(rec)
        return rec

    def add_fault(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def take_fault(self, route: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.matches(route):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def count(self, route: str | None = None, method: str | None = None) -> int:
        with self.lock:
            return sum(
                1
                for r in self.requests
                if (route is None or route_matches(route, r.route))
                and (method is None or r.method == method.upper())
            )

    def count_by_idempotency_key(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for r in self.requests:
                if r.idempotency_key is not None:
                    out[r.idempotency_key] = out.get(r.idempotency_key, 0) + 1
        return out

    def count_by_route(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.lock:
            for r in self.requests:
                out[r.route] = out.get(r.route, 0) + 1
        return out

    # -- usage ---------------------------------------------------------------------------------
    def chat_usage(self, prompt: int, completion: int) -> dict[str, Any]:
        """A chat-style `usage`, with the test's overrides (`FakeOpenAI.set_usage`) applied."""
        o = self.account.usage
        prompt = o.prompt_tokens if o.prompt_tokens is not None else prompt
        completion = o.completion_tokens if o.completion_tokens is not None else completion
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": o.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": o.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def response_usage(self, prompt: int, completion: int) -> dict[str, Any]:
        """The Responses API's `usage` (input/output tokens), overrides applied."""
        chat = self.chat_usage(prompt, completion)
        return {
            "input_tokens": chat["prompt_tokens"],
            "output_tokens": chat["completion_tokens"],
            "total_tokens": chat["total_tokens"],
            "input_tokens_details": {
                "cached_tokens": self.account.usage.cached_tokens,
                "cache_write_tokens": 0,
            },
            "output_tokens_details": {"reasoning_tokens": self.account.usage.reasoning_tokens},
        }

    # -- holds ---------------------------------------------------------------------------------
    def hold(self, kind: str) -> None:
        """Keep every unfinished object of ``kind`` ("runs", "files", "responses") in progress
        until :meth:`release`, objects created meanwhile included."""
        with self.lock:
            self.held.add(check_hold_kind(kind))

    def release(self, kind: str | None = None) -> None:
        """End the hold on ``kind`` (every kind when None): each held object finishes on its
        next read, as if its time had run out while it was held."""
        with self.lock:
            if kind is None:
                self.held.clear()
            else:
                self.held.discard(check_hold_kind(kind))
            self.released.notify_all()

    def cut_next_streams(self, times: int = 1) -> None:
        """The next `times` streamed answers close their connection half-way."""
        with self.lock:
            self.cuts += times

    def pause_stream(self) -> bool:
        """Called by a streamed answer half-way: False if it is to be cut off there, else
        True once "streams" is not held (at once when it is not)."""
        with self.lock:
            if self.cuts > 0:
                self.cuts -= 1
                return False
            if "streams" not in self.held:
                return True
            self.paused_streams += 1
            try:
                while "streams" in self.held:
                    self.released.wait(1.0)
            finally:
                self.paused_streams -= 1
            return True

    def _holding(self, kind: str, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` must stay in progress; once released, its clock is moved back so the
        read that follows the release finishes it at once."""
        if kind in self.held:
            obj["_held"] = True
            return True
        if obj.pop("_held", False):
            span = {
                "runs": self.run_seconds,
                "fine_tuning": self.run_seconds,
                "files": self.file_seconds,
                "responses": self.response_seconds,
            }[kind]
            obj["_t0"] = min(obj["_t0"], self.now() - span)
        return False

    # -- files ---------------------------------------------------------------------------------
    def create_file(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        with self.lock:
            now = self.now()
            final = self.next_file_status or (
                "error" if "fail" in filename.lower() else "processed"
            )
            self.next_file_status = None
            fid = self.new_id("file")
            self.files[fid] = {
                "id": fid,
                "object": "file",
                "bytes": len(content),
                "created_at": self.wall(now),
                "filename": filename,
                "purpose": purpose,
                "status": "uploaded",
                "status_details": None,
                "expires_at": None,
                "_t0": now,
                "_final": final,
            }
            self.file_contents[fid] = content
            return self._file_view(fid)

    def get_file(self, fid: str) -> dict[str, Any]:
        with self.lock:
            if fid not in self.files:
                raise not_found("file", fid)
            return self._file_view(fid)

    def list_files(self, purpose: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [
                self._file_view(f)
                for f, obj in self.files.items()
                if purpose is None or obj["purpose"] == purpose
            ]

    def delete_file(self, fid: str) -> dict[str, Any]:
        with self.lock:
            if self.files.pop(fid, None) is None:
                raise not_found("file", fid)
            self.file_contents.pop(fid, None)
            return {"id": fid, "object": "file", "deleted": True}

    def _file_view(self, fid: str) -> dict[str, Any]:
        obj = self.files[fid]
        if obj["status"] == "uploaded" and self._holding("files", obj):
            return public(obj)
        if obj["status"] == "uploaded" and self.now() - obj["_t0"] >= self.file_seconds:
            obj["status"] = obj["_final"]
            if obj["status"] == "error":
                obj["status_details"] = "The fake was told to fail processing this file."
        return public(obj)

    # -- assistants ----------------------------------------------------------------------------
    def put_assistant(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.assistants[obj["id"]] = obj
            return public(obj)

    def get_assistant(self, aid: str) -> dict[str, Any]:
        with self.lock:
            if aid not in self.assistants:
                raise not_found("assistant", aid)
            return self.assistants[aid]

    def delete_assistant(self, aid: str) -> dict[str, Any]:
        with self.lock:
            if self.assistants.pop(aid, None) is None:
                raise not_found("assistant", aid)
            return {"id": aid, "object": "assistant.deleted", "deleted": True}

    # -- threads and messages ------------------------------------------------------------------
    def create_thread(self, metadata: Any = None, tool_resources: Any = None) -> dict[str, Any]:
        with self.lock:
            tid = self.new_id("thread")
            self.threads[tid] = {
                "id": tid,
                "object": "thread",
                "created_at": self.wall(self.now()),
                "metadata": metadata or {},
                "tool_resources": tool_resources,
            }
            self.messages[tid] = {}
            self.runs[tid] = {}
            return self.threads[tid]

    def get_thread(self, tid: str) -> dict[str, Any]:
        with self.lock:
            if tid not in self.threads:
                raise not_found("thread", tid)
            return self.threads[tid]

    def delete_thread(self, tid: str) -> dict[str, Any]:
        with self.lock:
            if self.threads.pop(tid, None) is None:
                raise not_found("thread", tid)
            self.messages.pop(tid, None)
            self.runs.pop(tid, None)
            return {"id": tid, "object": "thread.deleted", "deleted": True}

    def add_message(
        self,
        tid: str,
        role: str,
        text_or_content: Any,
        *,
        attachments: Any = None,
        metadata: Any = None,
        run_id: str | None = None,
        assistant_id: str | None = None,
    ) -> dict[str, Any]:
        with self.lock:
            self.get_thread(tid)
            mid = self.new_id("msg")
            now = self.wall(self.now())
            self.messages[tid][mid] = {
                "id": mid,
                "object": "thread.message",
                "created_at": now,
                "thread_id": tid,
                "role": role,
                "content": message_content(text_or_content),
                "attachments": attachments,
                "metadata": metadata or {},
                "status": "completed",
                "completed_at": now,
                "incomplete_at": None,
                "incomplete_details": None,
                "assistant_id": assistant_id,
                "run_id": run_id,
            }
            return self.messages[tid][mid]

    def thread_messages(self, tid: str) -> list[dict[str, Any]]:
        with self.lock:
            self.get_thread(tid)
            for rid in list(self.runs[tid]):
                self._advance_run(self.runs[tid][rid])
            return list(self.messages[tid].values())

    def get_message(self, tid: str, mid: str) -> dict[str, Any]:
        with self.lock:
            msgs = self.messages.get(tid)
            if msgs is None:
                raise not_found("thread", tid)
            if mid not in msgs:
                raise not_found("message", mid)
            return msgs[mid]

    # -- runs ----------------------------------------------------------------------------------
    def create_run(self, tid: str, assistant_id: str, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.get_thread(tid)
            asst = self.get_assistant(assistant_id)
            active = [
                r
                for r in self.runs[tid].values()
                if self._advance_run(r)["status"] not in TERMINAL_RUN_STATUSES
            ]
            if active:
                raise FakeError(400, f"Thread {tid} already has an active run {active[0]['id']}.")
            for msg in body.get("additional_messages") or []:
                self.add_message(
                    tid,
                    msg.get("role", "user"),
                    msg.get("content", ""),
                    attachments=msg.get("attachments"),
                    metadata=msg.get("metadata"),
                )
            now = self.now()
            rid = self.new_id("run")
            tools = body.get("tools") if body.get("tools") is not None else asst["tools"]
            instructions = body.get("instructions") or asst.get("instructions") or ""
            if body.get("additional_instructions"):
                instructions = f"{instructions}\n{body['additional_instructions']}".strip()
            run = {
                "id": rid,
                "object": "thread.run",
                "created_at": self.wall(now),
                "assistant_id": assistant_id,
                "thread_id": tid,
                "status": "queued",
                "model": body.get("model") or asst["model"],
                "instructions": instructions,
                "tools": copy.deepcopy(tools),
                "metadata": body.get("metadata") or {},
                "parallel_tool_calls": body.get("parallel_tool_calls", True),
                "required_action": None,
                "last_error": None,
                "incomplete_details": None,
                "started_at": None,
                "completed_at": None,
                "cancelled_at": None,
                "failed_at": None,
                "expires_at": None,
                "usage": None,
                "temperature": body.get("temperature"),
                "top_p": body.get("top_p"),
                "response_format": body.get("response_format", "auto"),
                "tool_choice": body.get("tool_choice", "auto"),
                "truncation_strategy": {"type": "auto", "last_messages": None},
                "max_prompt_tokens": body.get("max_prompt_tokens"),
                "max_completion_tokens": body.get("max_completion_tokens"),
                "_t0": now,
                "_phase": "initial",
                "_tool_outputs": None,
                "_outcome": self.next_run_status or "completed",
                "_frozen": False,
            }
            self.next_run_status = None
            self.runs[tid][rid] = run
            return public(self._advance_run(run))

    def run_obj(self, tid: str, rid: str) -> dict[str, Any]:
        runs = self.runs.get(tid)
        if runs is None:
            raise not_found("thread", tid)
        if rid not in runs:
            raise not_found("run", rid)
        return runs[rid]

    def get_run(self, tid: str, rid: str) -> dict[str, Any]:
        with self.lock:
            return public(self._advance_run(self.run_obj(tid, rid)))

    def list_runs(self, tid: str) -> list[dict[str, Any]]:
        with self.lock:
            self.get_thread(tid)
            return [public(self._advance_run(r)) for r in self.runs[tid].values()]

    def cancel_run(self, tid: str, rid: str) -> dict[str, Any]:
        with self.lock:
            run = self._advance_run(self.run_obj(tid, rid))
            if run["status"] in TERMINAL_RUN_STATUSES or run["status"] == "cancelling":
                raise FakeError(400, f"Cannot cancel run with status '{run['status']}'.")
            run.update(
                status="cancelling",
                required_action=None,
                _phase="cancelling",
                _t0=self.now(),
                _frozen=False,
            )
            return public(run)

    def submit_tool_outputs(self, tid: str, rid: str, outputs: list[Any]) -> dict[str, Any]:
        with self.lock:
            run = self._advance_run(self.run_obj(tid, rid))
            if run["status"] != "requires_action":
                raise FakeError(
                    400, f"Runs in status '{run['status']}' do not accept tool outputs."
                )
            wanted = {c["id"] for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]}
            given = {o.get("tool_call_id") for o in outputs if isinstance(o, dict)}
            if wanted - given:
                raise FakeError(
                    400,
                    f"Expected tool outputs for call ids {sorted(wanted)}, "
                    f"got {sorted(x for x in given if x)}.",
                    param="tool_outputs",
                )
            run.update(
                status="in_progress",
                required_action=None,
                _phase="after_tools",
                _t0=self.now(),
                _tool_outputs=outputs,
                _frozen=False,
            )
            return public(run)

    def complete_run(self, tid: str, rid: str) -> dict[str, Any]:
        with self.lock:
            run = self.run_obj(tid, rid)
            self._finish_run(run, "completed", self.now())
            return public(run)

    def set_run_status(self, tid: str, rid: str, status: str, **fields: Any) -> dict[str, Any]:
        """Force a run's status. It then stays there (time no longer moves it) except that
        ``requires_action`` waits for tool outputs as usual and terminal statuses are final."""
        with self.lock:
            run = self.run_obj(tid, rid)
            now = self.now()
            if status in TERMINAL_RUN_STATUSES:
                self._finish_run(run, status, now)
            elif status == "requires_action":
                self._require_action(run, now, self._function_names(run) or ["fake_function"])
            else:
                run.update(status=status, _frozen=True)
            run.update(fields)
            return public(run)

    def _function_names(self, run: dict[str, Any]) -> list[str]:
        return [
            t["function"]["name"]
            for t in run["tools"]
            if isinstance(t, dict) and t.get("type") == "function" and t.get("function")
        ]

    def _advance_run(self, run: dict[str, Any]) -> dict[str, Any]:
        if run["_frozen"] or run["status"] in TERMINAL_RUN_STATUSES:
            return run
        if run["status"] == "requires_action":
            return run
        if run["_phase"] != "cancelling" and self._holding("runs", run):
            # Held: started, in progress, never finished (a cancel still goes through).
            if run["started_at"] is None:
                run["started_at"] = self.wall(self.now())
            run["status"] = "in_progress"
            return run
        now = self.now()
        elapsed = now - run["_t0"]
        rs = self.run_seconds
        if run["_phase"] == "cancelling":
            if elapsed >= rs / 2:
                self._finish_run(run, "cancelled", run["_t0"] + rs / 2)
            return run
        if run["_phase"] == "initial" and elapsed < rs / 2:
            return run
        if run["started_at"] is None:
            run["started_at"] = self.wall(run["_t0"] + rs / 2)
        if elapsed < rs:
            run["status"] = "in_progress"
            return run
        names = self._function_names(run)
        if run["_phase"] == "initial" and names and run["_tool_outputs"] is None:
            self._require_action(run, run["_t0"] + rs, names)
            return run
        self._finish_run(run, run["_outcome"], run["_t0"] + rs)
        return run

    def _require_action(self, run: dict[str, Any], at: float, names: list[str]) -> None:
        calls = [
            {
                "id": self.new_id("call"),
                "type": "function",
                "function": {"name": name, "arguments": "{}"},
            }
            for name in names
        ]
        run.update(
            status="requires_action",
            _frozen=False,
            expires_at=self.wall(at) + 600,
            required_action={
                "type": "submit_tool_outputs",
                "submit_tool_outputs": {"tool_calls": calls},
            },
        )

    def _finish_run(self, run: dict[str, Any], status: str, at: float) -> None:
        if run["status"] in TERMINAL_RUN_STATUSES:
            return
        wall = self.wall(at)
        run.update(status=status, required_action=None, _frozen=False, expires_at=None)
        if status == "completed":
            run["completed_at"] = wall
            run["usage"] = self.chat_usage(10, 5)
            last_user = next(
                (
                    m
                    for m in reversed(self.messages[run["thread_id"]].values())
                    if m["role"] == "user"
                ),
                None,
            )
            text = plain_text(last_user["content"]) if last_user else ""
            self.add_message(
                run["thread_id"],
                "assistant",
                f"echo: {text}",
                run_id=run["id"],
                assistant_id=run["assistant_id"],
            )
        elif status == "failed":
            run["failed_at"] = wall
            run["last_error"] = run.get("last_error") or {
                "code": "server_error",
                "message": "The fake was told to fail this run.",
            }
        elif status == "cancelled":
            run["cancelled_at"] = wall
        elif status == "incomplete":
            run["incomplete_details"] = {"reason": "max_completion_tokens"}

    # -- responses -----------------------------------------------------------------------------
    def put_response(self, obj: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            obj["_t0"] = self.now()
            obj["_outcome"] = self.next_response_status or "completed"
            self.next_response_status = None
            self.responses[obj["id"]] = obj
            return self._advance_response(obj)

    def get_response(self, rid: str) -> dict[str, Any]:
        with self.lock:
            if rid not in self.responses:
                raise not_found("response", rid)
            return self._advance_response(self.responses[rid])

    def cancel_response(self, rid: str) -> dict[str, Any]:
        with self.lock:
            obj = self.get_response(rid)
            if not obj.get("background"):
                raise FakeError(
                    400, "Only responses created with background=true can be cancelled."
                )
            resp = self.responses[rid]
            if resp["status"] not in TERMINAL_RESPONSE_STATUSES:
                resp["status"] = "cancelled"
            return public(resp)

    def _advance_response(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["status"] in TERMINAL_RESPONSE_STATUSES:
            return public(obj)
        if obj.get("background") and self._holding("responses", obj):
            obj["status"] = "in_progress"
            return public(obj)
        elapsed = self.now() - obj["_t0"]
        rs = self.response_seconds
        if obj.get("background") and elapsed < rs:
            obj["status"] = "queued" if elapsed < rs / 2 else "in_progress"
            return public(obj)
        outcome = obj["_outcome"]
        obj["status"] = outcome
        obj["completed_at"] = self.wall(obj["_t0"] + (rs if obj.get("background") else 0))
        if outcome == "completed":
            obj["output"] = obj.pop("_output")
            obj["usage"] = obj.pop("_usage")
        elif outcome == "failed":
            obj["error"] = {
                "code": "server_error",
                "message": "The fake was told to fail this response.",
            }
        return public(obj)


def check_hold_kind(kind: object) -> str:
    if not isinstance(kind, str) or kind not in HOLD_KINDS:
        raise FakeError(400, f"Cannot hold {kind!r}: use one of {sorted(HOLD_KINDS)}.")
    return kind


def public(obj: dict[str, Any]) -> dict[str, Any]:
    """A deep copy without the fake's private ``_`` keys, safe to serialise outside the lock."""
    return {k: copy.deepcopy(v) for k, v in obj.items() if not k.startswith("_")}


def message_content(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "text", "text": {"value": value, "annotations": []}}]
    out: list[dict[str, Any]] = []
    for part in value or []:
        if (
            isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        ):
            out.append({"type": "text", "text": {"value": part["text"], "annotations": []}})
        elif isinstance(part, dict):
            out.append(part)
    return out


def plain_text(content: list[dict[str, Any]]) -> str:
    return " ".join(
        p["text"]["value"]
        for p in content
        if p.get("type") == "text" and isinstance(p.get("text"), dict)
    )
