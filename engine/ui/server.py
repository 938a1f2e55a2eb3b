"""`engine ui` and `engine run --ui`: checks what it is asked to do, then serves the dashboard
with uvicorn, alone or beside a worker in its event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator

import uvicorn
from starlette.applications import Starlette

from ..client import Engine, resolve_database_url
from ..exceptions import EngineError
from ..prices import PriceTable
from .app import create_app
from .security import LOOPBACK, TOKEN_ENV, is_loopback

log = logging.getLogger("engine.ui")


def check(
    database_url: str | None, host: str, port: int, *, database_must_exist: bool = True
) -> str | None:
    """The access token to require, or EngineError when the dashboard must not start.

    `database_must_exist`: `engine ui` refuses a missing SQLite file (a worker creates it)."""
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
    missing = (
        Engine(resolve_database_url(database_url)).store.missing_file()
        if database_must_exist
        else None
    )
    if missing:
        raise EngineError(
            f"no engine database at {missing}: start a worker (`engine run APP`) or run "
            "`engine db upgrade` there first, or pass --database-url"
        )
    return token


def _server(
    database_url: str | None, host: str, port: int, read_only: bool, *, beside: bool = False
) -> uvicorn.Server:
    """A uvicorn server of the dashboard, once `check` has passed; it says where it listens."""
    token = check(database_url, host, port, database_must_exist=not beside)
    hosts = [*LOOPBACK, f"[{host}]" if ":" in host else host] if is_loopback(host) else None
    app: Starlette = create_app(database_url, read_only=read_only, token=token, allowed_hosts=hosts)
    shown = f"[{host}]" if ":" in host else host
    print(
        f"engine ui on http://{shown}:{port}/" + (" (read-only)" if read_only else ""), flush=True
    )
    # No access log: a browser's first request may carry ?token=..., which must not be logged.
    # A short graceful shutdown: open event streams would otherwise hold Ctrl-C for minutes.
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    return _BesideServer(config, app) if beside else _Server(config, app)


def serve(database_url: str | None, host: str, port: int, read_only: bool) -> None:
    """Serves until interrupted; EngineError (before anything is served) for bad settings."""
    _server(database_url, host, port, read_only).run()


class _Server(uvicorn.Server):
    """uvicorn, ending the dashboard's event streams when it shuts down (else each open page
    would hold the shutdown until uvicorn cancels it, with a traceback)."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ui = getattr(self.app.state, "ui", None)
        if ui is not None:
            ui.closing.set()
        await super().shutdown(sockets)


class _BesideServer(_Server):
    """A dashboard in a worker's event loop: the worker owns SIGINT/SIGTERM (it drains its runs
    first, then stops the dashboard), so uvicorn must not take them over."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_beside(
    work: Callable[[], Awaitable[None]],
    database_url: str | None,
    host: str,
    port: int,
    read_only: bool,
) -> None:
    """`engine run --ui`: serves the dashboard while `work()` (the worker) runs, and stops it once
    the worker has stopped. Bad settings are EngineError before the worker starts."""
    server = _server(database_url, host, port, read_only, beside=True)
    serving = asyncio.create_task(_serve_quietly(server), name="engine-ui")
    try:
        await work()
    finally:
        server.should_exit = True
        await serving


async def _serve_quietly(server: uvicorn.Server) -> None:
    """The dashboard never takes its worker down: uvicorn ends a failed start-up with
    SystemExit, which would otherwise stop the whole event loop."""
    try:
        await server.serve()
    except (Exception, SystemExit) as exc:
        log.error("the dashboard stopped: %s; the worker goes on without it", exc)
