"""Runs `engine` and `python` commands as forks of one pre-imported Python.

Every `engine ...` a test or a doc block runs used to be a fresh interpreter importing
SQLAlchemy, pydantic, openai and the engine: ~0.4-0.7 s of CPU each, hundreds of times per
suite. Here one server process imports all that once (`PRELOAD`); each command is a fork of it
that then becomes the command exactly as a fresh interpreter would: the client's argv,
environment, working directory, stdin/stdout/stderr (the same descriptors, so pipes,
redirections and `$(...)` work as before), its own session, its exit status, its signals. A
command still is a process of its own: a backgrounded `engine run` worker, a pipe's
`engine runs list | grep`, a `kill -9` work as with the real program.

What the fork keeps from the server is only what is the same in a fresh interpreter: imported
modules (an import has no effect that depends on the environment or the directory here; the
engine reads those when it runs) and the interpreter's start-up settings, which is why a
request whose PYTHON* or locale variables differ from the server's runs the real program.

Two clients: the doc test's shims (docs/shim.py, installed by docs/docvenv.py) and the tests'
`forked.spawn` (forked.py), which hands the test the command's own pid. The server is
`python forkserver.py SOCKET`; it ends, killing the commands still running, on SIGTERM or when
the process that started it is gone.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pkgutil
import runpy
import selectors
import signal
import socket
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

READY = "fork server ready"  # its starter waits for it
# What the blocks' commands import: the CLI and everything `engine run`, the fake OpenAI server
# and the generated job-body runner load (the engine's own modules are found by walking it).
PRELOAD = (
    "engine",
    "integrations.openai",
    "integrations.openai.testing",
    "alembic.command",
    "alembic.config",
    "alembic.runtime.migration",
    "alembic.op",
    "alembic.ddl.sqlite",
    "alembic.ddl.postgresql",
    "sqlalchemy.dialects.sqlite.aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "rich.console",
    "rich.table",
    "rich.tree",
    "mako.template",
)
# The dashboard's server (only `engine ui`); the migrations, which Alembic loads from their files.
NOT_PRELOADED = ("engine.ui", "engine.__main__", "engine.migrations")
# The environment a Python reads once, at start-up: a request must agree with the server's.
STARTUP_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE")


def preload() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    import engine

    for module in pkgutil.iter_modules(engine.__path__, "engine."):
        if not module.name.startswith(NOT_PRELOADED):
            importlib.import_module(module.name)
    # What is imported stays: no fork's collection of garbage should copy its pages.
    gc.collect()
    gc.freeze()


def startup_environment(env: dict[str, str]) -> dict[str, str]:
    """What a Python reads from its environment once, at start-up: a request must agree."""
    return {k: v for k, v in env.items() if k.startswith("PYTHON") or k in STARTUP_VARIABLES}


@dataclass
class Request:
    program: str  # the name the block ran: engine, python, python3...
    invoked: str  # the path it ran (the shim's)
    real: str  # the real program's path
    args: list[str]
    env: dict[str, str]
    cwd: str


@dataclass
class Running:
    conn: socket.socket
    pid: int = 0
    pidfd: int = -1
    command: str = ""  # for the log


@dataclass
class Server:
    path: str
    startup: dict[str, str] = field(default_factory=lambda: startup_environment(dict(os.environ)))
    running: dict[int, Running] = field(default_factory=dict)  # by the connection's fd

    def serve(self) -> Request:
        """Serves until SIGTERM; returns only in a forked child, the request it is to run."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(self.path)
        listener.listen(128)
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        print(READY, flush=True)
        server, starter = os.getpid(), os.getppid()
        try:
            # The session that started it killed with SIGKILL: no command outlives it either.
            while not stopping and os.getppid() == starter:
                for key, _ in selector.select(timeout=1.0):
                    if key.fileobj is listener:
                        conn, _ = listener.accept()
                        self.running[conn.fileno()] = Running(conn)
                        selector.register(conn, selectors.EVENT_READ)
                    elif isinstance(key.fileobj, int):  # a pidfd: that command has exited
                        self._reap(selector, key.data)
                    else:
                        assert isinstance(key.fileobj, socket.socket)
                        running = self.running[key.fileobj.fileno()]
                        if running.pid:  # the shim is gone (killed): so is its command
                            self._lost(selector, running)
                            continue
                        request = self._start(selector, running)
                        if request is not None:  # this is the forked child
                            selector.close()
                            listener.close()
                            return request
        finally:
            if os.getpid() == server:  # stopped, or a bug: no command outlives the server
                for running in self.running.values():
                    if running.pid:
                        _kill_group(running.pid)
                        with contextlib.suppress(ChildProcessError):
                            os.waitpid(running.pid, 0)
        raise SystemExit(0)

    def _start(self, selector: selectors.BaseSelector, running: Running) -> Request | None:
        conn = running.conn
        try:
            data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        except OSError:
            data, fds = b"", []
        request = Request(**json.loads(data)) if data and len(fds) == 3 else None
        if request is None or not self._can_run(request):
            with contextlib.suppress(OSError):
                conn.send(b"exec")
            self._forget(selector, running)
            for fd in fds:
                os.close(fd)
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            for other in self.running.values():
                if other.pidfd >= 0:
                    os.close(other.pidfd)
                other.conn.close()
            _become_process(fds)
            return request
        for fd in fds:
            os.close(fd)
        running.pid, running.pidfd = pid, os.pidfd_open(pid)
        running.command = " ".join([request.program, *request.args])[:200]
        selector.register(running.pidfd, selectors.EVENT_READ, running)
        try:
            conn.send(f"pid {pid}".encode())
        except OSError:
            self._lost(selector, running)
        return None

    def _can_run(self, request: Request) -> bool:
        if startup_environment(request.env) != self.startup:
            return False
        if request.program == "engine":
            return True
        args = request.args
        if args[:1] == ["-m"]:
            return len(args) >= 2
        return bool(args) and not args[0].startswith("-") and Path(request.cwd, args[0]).is_file()

    def _lost(self, selector: selectors.BaseSelector, running: Running) -> None:
        """The shim died (a block's process group killed): kill its command too; the exit is
        reaped when the pidfd says so."""
        _kill_group(running.pid)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(running.conn)

    def _reap(self, selector: selectors.BaseSelector, running: Running) -> None:
        _, status, usage = os.wait4(running.pid, 0)
        # What each command cost (the log says where a doc test's CPU goes).
        cpu = usage.ru_utime + usage.ru_stime
        print(f"{cpu:6.2f}s CPU, exit {status:>5}: {running.command}", flush=True)
        with contextlib.suppress(OSError):
            running.conn.send(f"exit {status}".encode())
        selector.unregister(running.pidfd)
        os.close(running.pidfd)
        self._forget(selector, running)

    def _forget(self, selector: selectors.BaseSelector, running: Running) -> None:
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(running.conn)
        self.running.pop(running.conn.fileno(), None)
        running.conn.close()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _become_process(fds: list[int]) -> None:
    """In the child: the shim's stdin/stdout/stderr and a session of its own, with the signal
    dispositions a fresh interpreter starts with."""
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """A traceback as a fresh interpreter prints it: from the command's own code, without the
    frames of this server and of runpy that started it."""
    while tb is not None and (
        tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>")
        or tb.tb_frame.f_code.co_filename.endswith("runpy.py")
    ):
        tb = tb.tb_next
    traceback.print_exception(kind, value, tb)


def run(request: Request, base_path: list[str]) -> None:
    """Runs the request as the real program would, in this (forked) interpreter. Exceptions
    propagate, as in a fresh interpreter: the traceback, exit status 1."""
    sys.excepthook = _excepthook
    os.chdir(request.cwd)
    os.environ.clear()
    os.environ.update(request.env)
    # What `sys.executable` would be: the python invoked, or the one beside the `engine` invoked
    # (the console script's shebang), so that a Python the command starts is a shim too.
    beside = Path(request.invoked).parent / "python3"
    sys.executable = request.invoked if request.program != "engine" else str(beside)
    for stream in (sys.stdout, sys.stderr):  # line-buffered on a terminal, as at start-up
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=stream.isatty() or stream is sys.stderr)
    args = request.args
    if request.program == "engine":
        # The console script itself, as bash would have started it.
        sys.argv = [request.invoked, *args]
        sys.path[:] = [str(Path(request.real).resolve().parent), *base_path]
        runpy.run_path(request.real, run_name="__main__")
    elif args[0] == "-m":
        sys.argv = ["-m", *args[2:]]
        sys.path[:] = [os.getcwd(), *base_path]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(args)
        sys.path[:] = [str(Path(args[0]).resolve().parent), *base_path]
        runpy.run_path(args[0], run_name="__main__")


def main() -> None:
    """`python forkserver.py SOCKET`: imports, then serves until SIGTERM."""
    del sys.path[0]  # this file's directory: no command's
    base_path = list(sys.path)
    preload()
    request = Server(sys.argv[1]).serve()
    run(request, base_path)


if __name__ == "__main__":
    main()
