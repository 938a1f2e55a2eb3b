"""`engine ui`: checks what it is asked to do, then serves the dashboard with uvicorn."""

from __future__ import annotations

import os
import socket

import uvicorn

from ..client import Engine, resolve_database_url
from ..exceptions import EngineError
from ..prices import PriceTable
from .app import create_app
from .security import LOOPBACK, TOKEN_ENV, is_loopback


def check(database_url: str | None, host: str, port: int) -> str | None:
    """The access token to require, or EngineError when the dashboard must not start."""
    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback(host) and token is None:
        raise EngineError(
            f"--host {host} would let other machines reach the dashboard: set {TOKEN_ENV} to a "
            "secret token first (e.g. `export ENGINE_UI_TOKEN=$(openssl rand -hex 16)`), or "
            "bind to 127.0.0.1"
        )
    if not 0 < port < 65536:
        raise EngineError(f"--port {port}: use a port from 1 to 65535, e.g. --port 8008")
    try:
        # Bound and released at once: uvicorn would only log the failure, with a traceback.
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise EngineError(
            f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port or --host"
        ) from None
    PriceTable.load()  # a broken $ENGINE_PRICES is one error line here, not a failed start
    missing = Engine(resolve_database_url(database_url)).store.missing_file()
    if missing:
        raise EngineError(
            f"no engine database at {missing}: start a worker (`engine run APP`) or run "
            "`engine db upgrade` there first, or pass --database-url"
        )
    return token


def serve(database_url: str | None, host: str, port: int, read_only: bool) -> None:
    """Serves until interrupted; EngineError (before anything is served) for bad settings."""
    token = check(database_url, host, port)
    hosts = [*LOOPBACK, f"[{host}]" if ":" in host else host] if is_loopback(host) else None
    app = create_app(database_url, read_only=read_only, token=token, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"engine ui on http://{shown}:{port}/" + (" (read-only)" if read_only else ""), flush=True
    )
    # No access log: a browser's first request may carry ?token=..., which must not be logged.
    # A short graceful shutdown: open event streams would otherwise hold Ctrl-C for minutes.
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
