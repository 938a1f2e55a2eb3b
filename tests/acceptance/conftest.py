"""Fixtures for the acceptance tests: the real `engine` CLI and real `engine run` processes.

Every process is started in its own session (so its whole group can be killed), has a hard
timeout, and is killed when the test ends, whatever happened. Waiting for a run to reach a status
uses the public Python API (`engine.Engine`), which is much cheaper than starting the CLI in a
loop. A test of the CLI reads what it asserts with the CLI (`show`, `list`: `engine runs show
--json`, `engine runs list --json`); any other test reads the same JSON in this process (`view`,
`runs`: `Engine.show_run` and `Engine.list_runs`, which those commands print), which saves an
`engine` process start (seconds on a busy machine) per read.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import forked
import pytest
from flagserver import FlagServer

from engine import Engine
from engine.app import load_app

ENGINE = forked.ENGINE
APPS = Path(__file__).parent / "apps"
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELED"})


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ENGINE_DATABASE_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def _kill_group(proc: forked.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.args)}\n-> exit {self.returncode}\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )


# Generous deadlines for a process to start or a command to finish: they cost nothing when the
# machine is quick, and a machine shared by several test sessions can be 10x slower than idle.
START_TIMEOUT = 60.0


def _spawn(args: list[str], cwd: Path, **streams: Any) -> forked.Process:
    """Starts `engine ARGS...` in its own session, so that its whole group can be killed (a
    fork of the tests' pre-imported Python: tests/forked.py)."""
    return forked.spawn([ENGINE, *args], cwd=cwd, env=_env(), **streams)


def run_cli(*args: str, cwd: Path, timeout: float = START_TIMEOUT) -> Result:
    """Runs `engine ARGS...` to completion (hard timeout; the process group is always killed)."""
    proc = _spawn(list(args), cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise AssertionError(
            f"`engine {' '.join(args)}` did not finish in {timeout}s\n{out}\n{err}"
        ) from None
    finally:
        _kill_group(proc)
    return Result([ENGINE, *args], proc.wait(), out, err)


class EngineProcess:
    """A long-running `engine ARGS...` whose output the test follows while it runs: a worker
    (`engine run`, output to a file) or a reader (`engine runs stream`, output line by line).
    Its group is killed by `close()`, whatever happened."""

    def __init__(self, args: list[str], cwd: Path, **streams: Any) -> None:
        self.args = [ENGINE, *args]
        self.proc = _spawn(args, cwd, **streams)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"`{' '.join(self.args)}` still running {timeout}s later:\n{self.output}"
            ) from None

    @property
    def output(self) -> str:
        return ""

    def close(self) -> None:
        _kill_group(self.proc)


class Worker(EngineProcess):
    """One `engine run APP` process; its stdout+stderr go to a file."""

    def __init__(self, app: Path, url: str, cwd: Path, name: str, *options: str) -> None:
        self.log_path = cwd / f"{name}.log"
        self._log = open(self.log_path, "wb")  # closed by kill9() / close()
        args = ["run", str(app), "--database-url", url, *options]
        super().__init__(args, cwd, stdout=self._log, stderr=subprocess.STDOUT)
        self.id: str | None = None

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Worker:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.output.splitlines():
                if line.startswith("engine worker ") and " on " in line:
                    self.id = line.split()[2]
                    return self
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode} before it was ready:\n{self.output}"
                )
            time.sleep(0.05)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.output}")

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def close(self) -> None:
        super().close()
        self._log.close()


class Follower(EngineProcess):
    """A long-running CLI command (`engine runs stream ...`) whose output lines the test reads
    as they come, each within a deadline, while the process goes on."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        super().__init__(args, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self, timeout: float = 30.0) -> str:
        """The next line it prints; fails if none comes within `timeout` or it exits first."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"`{' '.join(self.args)}` printed nothing in {timeout}s") from None
        if line is None:
            raise AssertionError(f"`{' '.join(self.args)}` exited: {self.rest(5)}")
        return line

    def rest(self, timeout: float = 30.0) -> Result:
        """Waits for it to exit; its remaining stdout lines and its stderr."""
        self.wait(timeout)
        self._reader.join(10)
        out = []
        while not self._lines.empty():
            line = self._lines.get()
            if line is not None:
                out.append(line)
        assert self.proc.stderr is not None
        return Result(self.args, self.proc.wait(), "\n".join(out), self.proc.stderr.read())

    def close(self) -> None:
        super().close()
        self._reader.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


class Procs:
    """Starts CLI commands and workers for one test (or module); kills them all at the end."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.workers: list[Worker] = []
        self.followers: list[Follower] = []

    def follow(self, *args: str) -> Follower:
        """Starts `engine ARGS...` and lets the test read its output while it runs."""
        follower = Follower(list(args), self.cwd)
        self.followers.append(follower)
        return follower

    def cli(self, *args: str, timeout: float = START_TIMEOUT) -> Result:
        return run_cli(*args, cwd=self.cwd, timeout=timeout)

    def ok(self, *args: str, timeout: float = START_TIMEOUT) -> str:
        result = self.cli(*args, timeout=timeout)
        assert result.returncode == 0, str(result)
        assert "Traceback" not in result.stderr, str(result)
        return result.stdout

    def worker(
        self, app: str, url: str, *, lease: float = 2.0, ready: bool = True, **options: Any
    ) -> Worker:
        extra = ["--lease-seconds", str(lease)]
        for name, value in options.items():
            flag = f"--{name.replace('_', '-')}"
            extra += [flag] if value is True else [flag, str(value)]
        w = Worker(APPS / app, url, self.cwd, f"worker{len(self.workers)}", *extra)
        self.workers.append(w)
        return w.wait_ready() if ready else w

    def close(self) -> None:
        for w in self.workers:
            w.close()
        for f in self.followers:
            f.close()

    # -- the CLI, parsed ------------------------------------------------------------------------

    def trigger(
        self,
        url: str,
        job_id: str,
        payload: Any = None,
        *,
        key: str | None = None,
        app: str | None = None,
    ) -> str:
        args = ["trigger", job_id, "--database-url", url]
        if payload is not None:
            args += ["--payload", json.dumps(payload)]
        if key is not None:
            args += ["--idempotency-key", key]
        if app is not None:
            args += ["--app", str(APPS / app)]
        out = self.ok(*args).strip()
        assert len(out.splitlines()) == 1 and out, f"trigger printed {out!r}"
        return out

    def show(self, url: str, run_id: str) -> dict[str, Any]:
        shown: dict[str, Any] = json.loads(
            self.ok("runs", "show", run_id, "--json", "--database-url", url)
        )
        return shown

    def list(self, url: str, *filters: str) -> builtins.list[dict[str, Any]]:
        listed: builtins.list[dict[str, Any]] = json.loads(
            self.ok("runs", "list", "--json", "--database-url", url, *filters)
        )
        return listed

    # -- the same, in this process ---------------------------------------------------------------

    @staticmethod
    def start(
        url: str,
        job_id: str,
        payload: Any = None,
        *,
        app: str | None = None,
        delay: float | None = None,
    ) -> str:
        """What `trigger` does, without starting `engine` (for tests of something else than the
        CLI): `app` is loaded here first, as `engine trigger --app` loads it."""
        if app is not None:
            load_app(str(APPS / app))
        run_id: str = _read(url, lambda engine: engine.trigger(job_id, payload, delay=delay))
        return run_id

    @staticmethod
    def view(url: str, run_id: str) -> dict[str, Any]:
        """What `runs show RUN_ID --json` prints, without starting `engine`."""
        view: dict[str, Any] = _as_printed(_read(url, lambda engine: engine.show_run(run_id)))
        return view

    @staticmethod
    def runs(
        url: str, job: str | None = None, status: str | None = None, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        """What `runs list --json [--job JOB] [--status STATUS] [--limit N]` prints."""
        rows: builtins.list[dict[str, Any]] = _as_printed(
            _read(url, lambda engine: engine.list_runs(job, status, limit))
        )
        return rows

    # -- helpers, reachable from tests through the fixture (conftest is not importable) ---------

    @staticmethod
    def status(url: str, run_id: str) -> str:
        return run_status(url, run_id)

    def wait_status(
        self, url: str, run_id: str, statuses: str | set[str], timeout: float = 30.0
    ) -> str:
        return wait_status(url, run_id, statuses, timeout, tuple(self.workers))

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            wait_until(check, timeout, what)
        except AssertionError as exc:
            logs = "\n".join(f"--- worker {w.pid}:\n{w.output}" for w in self.workers)
            raise AssertionError(f"{exc}\n{logs}") from None

    @staticmethod
    def lines(path: Path) -> builtins.list[str]:
        return lines(path)

    @staticmethod
    def counts(path: Path) -> Counter[str]:
        return counts(path)

    @staticmethod
    def completed_keys(tasks: builtins.list[dict[str, Any]]) -> set[str]:
        return completed_keys(tasks)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Procs]:
    """Like `procs`, shared by one test module (for a database several tests read)."""
    p = Procs(tmp_path_factory.mktemp("acceptance"))
    try:
        yield p
    finally:
        p.close()


# -- reading the database through the public Python API --------------------------------------


def _read(url: str, read: Callable[[Engine], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with Engine(url) as engine:
            return await read(engine)

    return asyncio.run(go())


def _as_printed(value: Any) -> Any:
    """`value` as the CLI's `--json` prints it (JSON types only)."""
    return json.loads(json.dumps(value))


def run_status(url: str, run_id: str) -> str:
    return str(_read(url, lambda engine: engine.get_run(run_id))["status"])


def wait_status(
    url: str,
    run_id: str,
    statuses: str | set[str] | frozenset[str],
    timeout: float = 30.0,
    workers: tuple[Worker, ...] = (),
) -> str:
    """Polls until the run is in one of `statuses`; fails early when it is final otherwise."""
    wanted = {statuses} if isinstance(statuses, str) else set(statuses)
    deadline = time.monotonic() + timeout
    status = "?"
    while time.monotonic() < deadline:
        status = run_status(url, run_id)
        if status in wanted:
            return status
        if status in FINAL:
            break
        time.sleep(0.1)
    logs = "\n".join(f"--- worker {w.pid}:\n{w.output}" for w in workers)
    raise AssertionError(f"run {run_id} is {status}, wanted {sorted(wanted)}\n{logs}")


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def counts(path: Path) -> Counter[str]:
    return Counter(lines(path))


def completed_keys(tasks: list[dict[str, Any]], prefix: str = "") -> set[str]:
    """Keys (a/b for subtasks) of the COMPLETED tasks in a `runs show --json` task tree."""
    keys: set[str] = set()
    for task in tasks:
        key = f"{prefix}{task['key']}"
        if task["status"] == "COMPLETED":
            keys.add(key)
        keys |= completed_keys(task["children"], f"{key}/")
    return keys


# -- a tiny HTTP endpoint for background_poll (tests/flagserver.py) ---------------------------


@pytest.fixture
def flag_server() -> Iterator[FlagServer]:
    with FlagServer({"answer": 42, "items": ["a", "b"]}) as server:
        yield server
