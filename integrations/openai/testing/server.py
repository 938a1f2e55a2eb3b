"""HTTP side of the fake: a standard-library threading server, request parsing and admin routes."""

from __future__ import annotations

import json
import socket
import threading
import time
import zlib
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import routes, routes_extra, sse  # noqa: F401  (routes_extra registers its routes)
from .faults import FakeError, Fault, RecordedRequest
from .limits import Usage
from .state import FakeState, check_hold_kind

ADMIN_PREFIX = "/_fake/"
# The routes that answer `"stream": true` with server-sent events.
_STREAMED = frozenset({"POST /v1/chat/completions", "POST /v1/responses"})


def _png_1x1() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")

    header = (1).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    pixels = zlib.compress(b"\x00\x10\xa3\x7f")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


PNG = _png_1x1()


def parse_multipart(content_type: str, body: bytes) -> dict[str, Any]:
    """Form fields by name: plain fields as ``str``, file fields as ``(filename, bytes)``."""
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
    )
    if not message.is_multipart():
        raise FakeError(400, "Could not parse the multipart body.")
    form: dict[str, Any] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not name:
            continue
        raw = part.get_payload(decode=True)
        payload = raw if isinstance(raw, bytes) else b""
        filename = part.get_filename()
        if filename is not None:
            form[str(name)] = (filename, payload)
        else:
            form[str(name)] = payload.decode("utf-8", "replace")
    return form


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    timeout = 60
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Small JSON answers must not wait on Nagle/delayed-ACK (about 40 ms per request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    # -- plumbing ------------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        if isinstance(payload, bytes):
            data, ctype = payload, "application/octet-stream"
        else:
            data, ctype = json.dumps(payload).encode("utf-8"), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", f"req_fake_{id(self):x}")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(
        self,
        fake: FakeOpenAI,
        route: str,
        body: dict[str, Any],
        answer: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        """The answer as server-sent events (testing/sse.py), written as they would come,
        paused half-way while "streams" is held; the connection closes at the end."""
        if route == "POST /v1/chat/completions":
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events, hold_at = sse.chat_events(answer, include_usage)
        else:
            events, hold_at = sse.response_events(answer)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.send_header("x-request-id", f"req_fake_{id(self):x}")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True
        for n, (name, data) in enumerate(events):
            if n == hold_at and not fake.state.pause_stream():
                return  # cut off: the connection closes without the rest
            text = data if isinstance(data, str) else json.dumps(data)
            line = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
            self.wfile.write(line.encode("utf-8"))
            self.wfile.flush()

    def _send_error(self, err: FakeError, headers: dict[str, str] | None = None) -> None:
        self._send(err.status, err.body(), headers)

    def _handle(self) -> None:
        fake: FakeOpenAI = self.server.fake
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        method = self.command
        raw = self._read_body()
        if path.startswith(ADMIN_PREFIX):
            self._admin(fake, method, path, raw)
            return
        route, handler, params = routes.match(method, path)
        body: Any = None
        form: dict[str, Any] = {}
        parse_error: FakeError | None = None
        ctype = self.headers.get("Content-Type", "")
        try:
            if ctype.lower().startswith("multipart/form-data"):
                form = parse_multipart(ctype, raw)
            elif raw.strip():
                body = json.loads(raw)
        except (ValueError, FakeError) as exc:
            parse_error = (
                exc
                if isinstance(exc, FakeError)
                else FakeError(400, f"We could not parse the JSON body of your request: {exc}")
            )
        headers = {k: v for k, v in self.headers.items()}
        recorded = (
            body
            if body is not None
            else ({k: v for k, v in form.items() if isinstance(v, str)} or None)
        )
        fake.state.record(method, path, route, headers, recorded, query)
        account = fake.state.account
        account.enter()
        try:
            self._answer(fake, route, handler, params, body, query, form, parse_error)
        finally:
            account.leave()

    def _answer(
        self,
        fake: FakeOpenAI,
        route: str,
        handler: routes.Handler | None,
        params: dict[str, str],
        body: Any,
        query: dict[str, str],
        form: dict[str, Any],
        parse_error: FakeError | None,
    ) -> None:
        if fake.latency > 0:
            # Requests take time, so concurrent callers overlap and the high-water mark shows it.
            time.sleep(fake.latency)
        refusal, limit_headers = fake.state.account.admit(route, body)
        fault = fake.state.take_fault(route)
        if fault is not None:
            self._send_error(fault.error(), {**limit_headers, **fault.headers()})
            return
        if refusal is not None:
            self._send_error(refusal, limit_headers)
            return
        if parse_error is not None:
            self._send_error(parse_error, limit_headers)
            return
        if handler is None:
            literal = f"{self.command} {urlsplit(self.path).path.rstrip('/') or '/'}"
            status = 405 if route != literal else 404
            self._send_error(FakeError(status, f"Invalid URL ({literal})"), limit_headers)
            return
        request = routes.Request(fake.state, params, body, query, fake.base_url, form)
        try:
            answer = handler(request)
            if isinstance(body, dict) and body.get("stream") and route in _STREAMED:
                self._send_stream(fake, route, body, answer, limit_headers)
                return
            self._send(200, answer, limit_headers)
        except FakeError as err:
            self._send_error(err, limit_headers)
        except Exception as exc:  # a bug in the fake: answer 500 rather than hang the client
            self._send_error(FakeError(500, f"Fake server error: {exc!r}"), limit_headers)

    def _admin(self, fake: FakeOpenAI, method: str, path: str, raw: bytes) -> None:
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as exc:
            self._send_error(FakeError(400, f"Malformed JSON: {exc}"))
            return
        if method == "GET" and path == "/_fake/stats":
            self._send(200, fake.stats())
        elif method == "POST" and path == "/_fake/faults":
            try:
                fake.fail_next(**body)
            except TypeError as exc:
                self._send_error(FakeError(400, str(exc)))
                return
            self._send(200, {"ok": True, "faults": len(fake.state.faults)})
        elif method == "GET" and path == "/_fake/concurrency":
            self._send(200, fake.state.account.stats())
        elif method == "POST" and path == "/_fake/limits":
            try:
                fake.set_limits(**body)
            except (TypeError, FakeError) as exc:
                self._send_error(exc if isinstance(exc, FakeError) else FakeError(400, str(exc)))
                return
            self._send(200, {"ok": True, **fake.state.account.stats()})
        elif method == "POST" and path == "/_fake/quota":
            fake.exhaust_quota(bool(body.get("exhausted", True)))
            self._send(200, {"ok": True})
        elif method == "POST" and path == "/_fake/usage":
            try:
                fake.set_usage(**body)
            except TypeError as exc:
                self._send_error(FakeError(400, str(exc)))
                return
            self._send(200, {"ok": True})
        elif method == "POST" and path == "/_fake/reset":
            fake.reset()
            self._send(200, {"ok": True})
        elif method == "POST" and path == "/_fake/hooks":
            for key in (
                "next_file_status",
                "next_run_status",
                "next_response_status",
                "next_fine_tune_status",
            ):
                if key in body:
                    setattr(fake, key, body[key])
            self._send(200, {"ok": True})
        elif method == "POST" and path in ("/_fake/hold", "/_fake/release"):
            kind = body.get("kind")
            try:
                if path == "/_fake/hold":
                    fake.hold(check_hold_kind(kind))
                else:
                    fake.release(kind)
            except FakeError as err:
                self._send_error(err)
                return
            self._send(200, {"ok": True, "held": sorted(fake.state.held)})
        elif method == "GET" and path.startswith("/_fake/images/"):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
        else:
            self._send_error(FakeError(404, f"Unknown admin endpoint {method} {path}"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeOpenAI


class FakeOpenAI:
    """A stateful fake of the OpenAI HTTP API served on a loopback port.

    ``run_seconds``/``file_seconds``/``response_seconds`` set how long a run, a file's
    processing and a background response take to finish. ``requests_per_minute`` and
    ``tokens_per_minute`` enforce OpenAI-style rate limits (429 with ``retry-after``; every
    answer carries ``x-ratelimit-*`` headers); ``latency`` makes every API request take that
    many seconds, so that concurrent callers overlap (see :meth:`max_concurrent`)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        run_seconds: float = 0.2,
        file_seconds: float = 0.1,
        response_seconds: float = 0.2,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        latency: float = 0.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.latency = float(latency)
        self.state = FakeState(
            run_seconds=run_seconds,
            file_seconds=file_seconds,
            response_seconds=response_seconds,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        if self._server is not None:
            return self
        server = _Server((self.host, self._requested_port), Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def serve_forever(self) -> None:
        """Block until :meth:`stop` is called from another thread (or a signal handler)."""
        if self._thread is None:
            self.start()
        assert self._thread is not None
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=0.2)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # -- inspection ----------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self.state.lock:
            return list(self.state.requests)

    def count(self, route: str | None = None, method: str | None = None) -> int:
        return self.state.count(route, method)

    def count_by_idempotency_key(self) -> dict[str, int]:
        return self.state.count_by_idempotency_key()

    def stats(self) -> dict[str, Any]:
        with self.state.lock:
            return {
                "requests": [r.to_dict() for r in self.state.requests],
                "by_route": self.state.count_by_route(),
                "by_idempotency_key": self.state.count_by_idempotency_key(),
                # Streamed answers paused at their hold point right now (hold("streams")).
                "paused_streams": self.state.paused_streams,
                **self.state.account.stats(),
            }

    def max_concurrent(self) -> int:
        """The most API requests the fake was serving at once (since start or reset)."""
        return int(self.state.account.stats()["max_concurrent"])

    def rate_limited(self) -> int:
        """How many requests the fake refused for its rate limits (429 rate_limit_exceeded)."""
        return int(self.state.account.stats()["rate_limited"])

    def set_limits(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        burst_seconds: float | None = None,
    ) -> None:
        """Enforce these per-minute limits from now on (None: unlimited); buckets start full."""
        self.state.account.set_limits(requests_per_minute, tokens_per_minute, burst_seconds)

    def exhaust_quota(self, exhausted: bool = True) -> None:
        """Every API request answers 429 ``insufficient_quota`` until called with False."""
        self.state.account.quota_exhausted = bool(exhausted)

    def set_usage(
        self,
        *,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
    ) -> None:
        """The ``usage`` chat completions, runs and responses report from now on (None keeps
        the fake's own count: words of the prompt and of the reply)."""
        self.state.account.usage = Usage(
            prompt_tokens, completion_tokens, int(cached_tokens), int(reasoning_tokens)
        )

    # -- steering ------------------------------------------------------------------------------
    def fail_next(
        self,
        route: str,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        message: str = "Injected fault",
        *,
        reset_requests: str | None = None,
        code: str | None = None,
        type: str | None = None,
    ) -> None:
        """The next ``times`` requests to ``route`` ("POST /v1/assistants", or a path alone for
        any method, or "*") answer ``status`` with an OpenAI-shaped error body."""
        self.state.add_fault(
            Fault(route, int(status), int(times), retry_after, message, reset_requests, code, type)
        )

    def complete_run(self, thread_id: str, run_id: str) -> dict[str, Any]:
        return self.state.complete_run(thread_id, run_id)

    def set_run_status(
        self, thread_id: str, run_id: str, status: str, **fields: Any
    ) -> dict[str, Any]:
        return self.state.set_run_status(thread_id, run_id, status, **fields)

    def hold(self, kind: str) -> None:
        """Keep unfinished ``kind`` objects ("runs", "files" or "responses": background ones)
        in progress until :meth:`release`: a run stays ``in_progress``, a file ``uploaded``;
        with "streams", a streamed answer (``stream: true``) pauses half-way."""
        self.state.hold(kind)

    def paused_streams(self) -> int:
        """Streamed answers paused half-way right now by a hold on "streams"."""
        return self.state.paused_streams

    def cut_next_streams(self, times: int = 1) -> None:
        """The next `times` streamed answers close their connection half-way."""
        self.state.cut_next_streams(times)

    def release(self, kind: str | None = None) -> None:
        """End a hold (every hold when ``kind`` is None): held objects finish on their next
        read."""
        self.state.release(kind)

    def reset(self) -> None:
        """Forget every object, recorded request, pending fault and hook; refill the limits,
        end an exhausted quota and usage overrides, restart the high-water mark."""
        self.state.clear()
        self.state.account.reset()

    next_file_status = property(
        lambda self: self.state.next_file_status,
        lambda self, value: setattr(self.state, "next_file_status", value),
        doc="Final status ('processed' or 'error') of the next uploaded file.",
    )
    next_run_status = property(
        lambda self: self.state.next_run_status,
        lambda self, value: setattr(self.state, "next_run_status", value),
        doc="Outcome of the next created run ('failed', 'expired', 'incomplete', ...).",
    )
    next_fine_tune_status = property(
        lambda self: self.state.next_fine_tune_status,
        lambda self, value: setattr(self.state, "next_fine_tune_status", value),
        doc="Outcome of the next fine-tuning job ('failed', 'cancelled'; default succeeded).",
    )
    next_response_status = property(
        lambda self: self.state.next_response_status,
        lambda self, value: setattr(self.state, "next_response_status", value),
        doc="Outcome of the next created response ('failed', 'incomplete', ...).",
    )
