"""Who may use the dashboard: the access token, the CSRF token, and which hosts need a token.

- Bound to a loopback address, the dashboard is as private as the machine; on any other
  address it refuses to start without ENGINE_UI_TOKEN, then checks it on every request: an
  `Authorization: Bearer` header, or the cookie set when a browser opens `/?token=...` once
  (which redirects to the same URL without the token, so it stays out of history and logs).
- A state-changing request (POST) must carry the per-process CSRF token the pages embed in
  their forms, and come from this origin when the browser says where it comes from.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
from urllib.parse import urlencode, urlsplit

from starlette.datastructures import URL, QueryParams
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

TOKEN_ENV = "ENGINE_UI_TOKEN"
COOKIE = "engine_ui_token"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


# Host names a browser uses for this machine (the Host header, port aside).
LOOPBACK = ["127.0.0.1", "localhost", "[::1]"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class TokenMiddleware:
    """Refuses every request that does not carry `token` (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        url = URL(scope=scope)
        headers = dict(scope["headers"])
        given = QueryParams(url.query).get("token")
        if given is not None:
            response = self._login(url, given)
        elif self._authorized(headers):
            await self.app(scope, receive, send)
            return
        else:
            response = PlainTextResponse(
                "unauthorized: open this dashboard's URL with ?token=<ENGINE_UI_TOKEN> once, "
                "or send 'Authorization: Bearer <token>'",
                status_code=401,
            )
        await response(scope, receive, send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer ") and same(auth[7:].strip(), self.token):
            return True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and same(value, self.token):
                return True
        return False

    def _login(self, url: URL, given: str) -> Response:
        if not same(given, self.token):
            return PlainTextResponse("unauthorized: wrong token", status_code=401)
        rest = [(k, v) for k, v in QueryParams(url.query).multi_items() if k != "token"]
        target = url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", path="/")
        return response


def cross_origin(headers: dict[str, str], host: str | None) -> bool:
    """True when the browser says the request comes from another origin."""
    origin = headers.get("origin")
    if not origin or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != host
