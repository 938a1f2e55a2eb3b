"""`engine` commands for the tests, started as forks of one pre-imported Python (forkserver.py).

An `engine run` worker spends ~0.65 s of CPU importing before it serves, an `engine runs show`
~0.35 s; the suite starts several hundred of them, which was a third of its CPU. `spawn` and
`run` have the parts of `subprocess.Popen` and `subprocess.run` the tests use, and the command
they start is still a process of its own, in its own session: `pid` is the command's own, so
`os.killpg(proc.pid, SIGKILL)` is a real `kill -9` of the worker, its exit status is the
command's, and its stdin/stdout/stderr are the descriptors the test gave.

One server per test process, started on first use (~1 s of CPU, once) and stopped at exit.
Where it cannot run a command as a fresh interpreter would (a different PYTHON* or locale
environment), or ENGINE_TEST_FORK=0, or it failed to start, the real program runs instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from forkserver import READY, startup_environment

ENGINE = str(Path(sys.executable).parent / "engine")
SERVER = Path(__file__).with_name("forkserver.py")
START_TIMEOUT = 120.0  # its imports, on a loaded machine


class Server:
    """A fork server process: `python forkserver.py SOCKET`, with the environment given; its
    socket (`s`) and log (one line per command: its CPU, its exit status) in `directory`."""

    def __init__(self, env: dict[str, str], directory: Path | None = None) -> None:
        self.directory = directory or Path(tempfile.mkdtemp(prefix="engine-fork-"))
        self.socket = str(self.directory / "s")  # short: a unix socket's path has 107 bytes
        self.log = self.directory / "forkserver.log"
        self.startup = startup_environment(env)  # a command whose own differs runs the real program
        with self.log.open("wb") as log:
            # Not in a session of its own: a SIGTERM to the test session (tests/reaper.py)
            # reaches it, and it kills the commands it runs before it ends.
            self.proc = subprocess.Popen(
                [sys.executable, str(SERVER), self.socket],
                cwd=self.directory,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while READY not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the fork server did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # it kills the commands still running
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        with contextlib.suppress(OSError):
            os.unlink(self.socket)


_server: Server | None = None
_server_failed = False
_server_lock = threading.Lock()


def server() -> Server | None:
    """This process's fork server (started on first use), or None where none can run."""
    global _server, _server_failed
    if os.environ.get("ENGINE_TEST_FORK", "1") == "0" or not hasattr(socket, "send_fds"):
        return None
    with _server_lock:
        if _server is None and not _server_failed:
            env = dict(os.environ)
            env["PYTHONUNBUFFERED"] = "1"  # what the tests' workers run with
            env.pop("PYTEST_CURRENT_TEST", None)
            try:
                _server = Server(env)
            except (OSError, RuntimeError) as exc:
                _server_failed = True
                sys.stderr.write(f"tests: no fork server, the real `engine` runs ({exc})\n")
            else:
                atexit.register(_server.close)
        return _server


class Forked:
    """A command the fork server runs, with the parts of `subprocess.Popen` the tests use."""

    def __init__(
        self, args: list[str], conn: socket.socket, pid: int, pipes: dict[str, IO[Any] | None]
    ) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self.stdin, self.stdout, self.stderr = pipes["stdin"], pipes["stdout"], pipes["stderr"]
        self._conn = conn
        self._lock = threading.Lock()
        self._output: dict[str, list[Any]] = {}
        self._readers: list[threading.Thread] = []

    def poll(self) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return self.wait(0)
        return None

    def wait(self, timeout: float | None = None) -> int:
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            self._conn.settimeout(timeout)
            try:
                answer = self._conn.recv(64).decode()
            except (TimeoutError, BlockingIOError):
                raise subprocess.TimeoutExpired(self.args, timeout or 0) from None
            self._conn.close()
            # "exit STATUS" (a wait status); nothing: the server died, and so did the command.
            status = int(answer.split()[1]) if answer else signal.SIGKILL
            self.returncode = os.waitstatus_to_exitcode(status)
            return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """As Popen's: may be called again after a timeout (once the caller killed it)."""
        if not self._readers:
            self._start_io(input)
        deadline = None if timeout is None else time.monotonic() + timeout
        self.wait(timeout)
        for reader in self._readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self._collected("stdout"), self._collected("stderr")

    def _start_io(self, input: Any) -> None:
        def read(name: str, stream: IO[Any]) -> None:
            self._output[name] = [stream.read()]
            stream.close()

        for name in ("stdout", "stderr"):
            stream = getattr(self, name)
            if stream is not None:
                self._readers.append(
                    threading.Thread(target=read, args=(name, stream), daemon=True)
                )
        for reader in self._readers:
            reader.start()
        if self.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                if input:
                    self.stdin.write(input)
                self.stdin.close()

    def _collected(self, name: str) -> Any:
        return self._output.get(name, [None])[0]


Process = Forked | subprocess.Popen[Any]


def _descriptor(
    name: str, value: Any, text: bool, opened: list[int], pipes: dict[str, IO[Any] | None]
) -> int:
    """The descriptor the command gets for `name` (Popen's conventions), and the test's end of
    a pipe in `pipes`."""
    pipes[name] = None
    if value is None:
        return {"stdin": 0, "stdout": 1, "stderr": 2}[name]
    if value == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_RDWR)
        opened.append(fd)
        return fd
    if value == subprocess.PIPE:
        read_end, write_end = os.pipe()
        ours, theirs = (write_end, read_end) if name == "stdin" else (read_end, write_end)
        mode = ("w" if name == "stdin" else "r") + ("" if text else "b")
        pipes[name] = open(ours, mode, encoding="utf-8" if text else None)
        opened.append(theirs)
        return theirs
    if isinstance(value, int):
        return value
    return int(value.fileno())


def spawn(
    args: Sequence[str],
    *,
    cwd: str | Path,
    env: dict[str, str] | None = None,
    stdin: Any = None,
    stdout: Any = None,
    stderr: Any = None,
    text: bool = False,
) -> Process:
    """`subprocess.Popen(args, ..., start_new_session=True)` for an `engine` command: a fork of
    the server where it can, the real program otherwise."""
    env = dict(os.environ if env is None else env)
    program = [str(a) for a in args]
    fork = server() if program[0] == ENGINE else None
    if fork is not None and startup_environment(env) == fork.startup:
        forked = _ask(fork, program, str(cwd), env, stdin, stdout, stderr, text)
        if forked is not None:
            return forked
    return subprocess.Popen(
        program,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        text=text,
        start_new_session=True,
    )


def _ask(
    fork: Server,
    program: list[str],
    cwd: str,
    env: dict[str, str],
    stdin: Any,
    stdout: Any,
    stderr: Any,
    text: bool,
) -> Forked | None:
    opened: list[int] = []
    pipes: dict[str, IO[Any] | None] = {}
    fds = [_descriptor("stdin", stdin, text, opened, pipes)]
    fds.append(_descriptor("stdout", stdout, text, opened, pipes))
    fds.append(
        fds[1]
        if stderr == subprocess.STDOUT
        else _descriptor("stderr", stderr, text, opened, pipes)
    )
    pipes.setdefault("stderr", None)
    request = {
        "program": "engine",
        "invoked": program[0],
        "real": program[0],
        "args": program[1:],
        "env": env,
        "cwd": cwd,
    }
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(fork.socket)
        socket.send_fds(conn, [json.dumps(request).encode()], fds)
        answer = conn.recv(64).decode()
    except OSError:
        answer = ""
    finally:
        for fd in opened:  # the command has its own copies now
            os.close(fd)
    if not answer.startswith("pid "):
        conn.close()
        for pipe in pipes.values():
            if pipe is not None:
                pipe.close()
        return None
    return Forked(program, conn, int(answer.split()[1]), pipes)


def run(
    args: Sequence[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    input: Any = None,
    timeout: float | None = None,
    text: bool = False,
) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(args, ..., capture_output=True)` for an `engine` command (the process
    group is killed if it outlives `timeout`). Its output is read whole once it exits, so
    PYTHONUNBUFFERED (which the fork server starts with) changes nothing the test sees."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    proc = spawn(
        args,
        cwd=os.getcwd() if cwd is None else cwd,
        env=env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(list(args), proc.returncode, out, err)
