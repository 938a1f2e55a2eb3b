"""Real database faults for tests: a TCP proxy that cuts or refuses connections, and a private
PostgreSQL cluster a test can stop, start and restart.

Both are driven from plain synchronous calls, so sync tests, async tests (on their own loop) and
the tests that start `engine run` subprocesses use them alike:

- `TcpProxy` runs its own asyncio loop in a daemon thread. Point a worker at the proxy's port
  (`with_port(url, proxy.port)`) and the test can `cut()` every live connection (the worker sees
  a connection reset mid-statement) or `refuse()` new ones (a server that is down) until
  `accept()`, or `cut_after_commit(marker)`: lose one commit's answer (the transaction that
  sent `marker` commits on the server, and its connection is cut as the answer comes back).
- `PrivatePostgres` runs `initdb` on a temporary directory and `pg_ctl` on a free port, with
  trust authentication, so a test can `restart()` or `stop()` the server its worker uses without
  touching the shared one. The `private_pg` fixture always stops and removes it.

Import the fixture into a test module to use it: `from faults import private_pg  # noqa: F401`.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import reaper

T = TypeVar("T")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_port(url: str, port: int, host: str = "127.0.0.1") -> str:
    """`url` with its host and port replaced (user, password, path and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def run_in_thread(make: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """Runs a coroutine to completion on a fresh loop in another thread.

    Works whether or not the caller is inside a running event loop (asyncio.run is not allowed
    there), which is what lets async tests call the synchronous helpers below."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(make())  # type: ignore[arg-type]
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"helper coroutine did not finish in {timeout}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def pg_execute(dsn: str, sql: str, *args: Any) -> list[Any]:
    """Runs one statement on PostgreSQL (plain `postgresql://` DSN) and returns its rows."""
    import asyncpg

    dsn = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def run() -> list[Any]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return run_in_thread(run)


# -- TCP proxy ----------------------------------------------------------------------------------


class TcpProxy:
    """An asyncio TCP proxy to `upstream_host:upstream_port`, on its own loop in its own thread.

    `start()` returns the port to connect to. `cut()` closes every live connection at once (both
    sides), `refuse(seconds)` makes new connections close as soon as they are accepted (for
    `seconds`, or until `accept()`), `stop()` shuts it all down. All methods are synchronous and
    thread-safe; `connections` counts the connections accepted and piped so far.
    """

    def __init__(self, upstream_host: str = "127.0.0.1", upstream_port: int = 5432) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0
        self.refused = 0
        self._refusing = False
        # cut_after_commit(): the marker armed, and how many commits were cut so far.
        self._commit_marker: bytes | None = None
        self.commits_cut = 0
        self._accept_handle: asyncio.TimerHandle | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # -- public, called from any thread ---------------------------------------------------------

    def start(self) -> int:
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, "127.0.0.1", 0)
                )
                self.port = int(self._server.sockets[0].getsockname()[1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=main, name="tcp-proxy", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self.port

    def cut(self) -> int:
        """Closes every live connection; returns how many there were."""
        return self._call(self._cut)

    def refuse(self, seconds: float | None = None) -> None:
        """New connections are closed at once, for `seconds` or until `accept()`."""

        def go() -> None:
            self._refusing = True
            if self._accept_handle is not None:
                self._accept_handle.cancel()
                self._accept_handle = None
            if seconds is not None:
                assert self._loop is not None
                self._accept_handle = self._loop.call_later(seconds, self._accept)

        self._call(go)

    def cut_after_commit(self, marker: bytes) -> None:
        """One lost commit answer (PostgreSQL): the first connection that sends `marker` (a
        piece of a statement's text) has its next COMMIT passed on to the server, and is cut
        when the server answers it, so the transaction commits and the client never hears so.
        `commits_cut` counts it once done."""

        def go() -> None:
            self._commit_marker = marker

        self._call(go)

    def accept(self) -> None:
        """New connections are piped to the upstream again."""
        self._call(self._accept)

    @property
    def live(self) -> int:
        """How many connections are open through the proxy right now."""
        return len(self._live) // 2

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            self._cut()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None
        self._thread = None

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- on the proxy's loop --------------------------------------------------------------------

    def _call(self, fn: Callable[[], T]) -> T:
        if self._loop is None:
            raise RuntimeError("TcpProxy is not started")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _accept(self) -> None:
        self._refusing = False
        if self._accept_handle is not None:
            self._accept_handle.cancel()
            self._accept_handle = None

    def _cut(self) -> int:
        writers = list(self._live)
        self._live.clear()
        for writer in writers:
            _abort(writer)
        return len(writers) // 2

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self._refusing:
            self.refused += 1
            _abort(client_w)
            return
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(client_w)
            return
        if self._refusing:  # refuse() was called while the upstream connection was opening
            self.refused += 1
            _abort(client_w)
            _abort(server_w)
            return
        self.connections += 1
        self._live.update((client_w, server_w))
        doom = _Doom()
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, doom.outgoing(self)),
                self._pipe(server_r, client_w, doom.incoming(self)),
            )
        finally:
            for w in (client_w, server_w):
                self._live.discard(w)
                _abort(w)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        passes: Callable[[bytes], bool] = lambda data: True,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if writer not in self._live or not passes(data):
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other too, as a real connection loss would.
            self._live.discard(writer)
            _abort(writer)


class _Doom:
    """One connection's part in `TcpProxy.cut_after_commit`: whether it sent the marker, then
    its COMMIT; the server's next answer is then dropped and the connection cut."""

    def __init__(self) -> None:
        self.marked = False
        self.committing = False

    def outgoing(self, proxy: TcpProxy) -> Callable[[bytes], bool]:
        def passes(data: bytes) -> bool:
            marker = proxy._commit_marker
            if marker is not None and marker in data:
                proxy._commit_marker = None  # one connection, once
                self.marked = True
            if self.marked and b"COMMIT" in data:
                self.committing = True
            return True

        return passes

    def incoming(self, proxy: TcpProxy) -> Callable[[bytes], bool]:
        def passes(data: bytes) -> bool:
            if not self.committing:
                return True
            proxy.commits_cut += 1
            return False  # the pipe ends, and with it this connection (both sides)

        return passes


def _abort(writer: asyncio.StreamWriter) -> None:
    """Closes a connection at once (RST, not a graceful FIN after buffered data)."""
    with contextlib.suppress(Exception):
        writer.transport.abort()


# -- private PostgreSQL cluster -----------------------------------------------------------------


def _pg_bindir() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    for path in candidates:
        if os.path.exists(os.path.join(path, "initdb")) and os.path.exists(
            os.path.join(path, "pg_ctl")
        ):
            return path
    found = shutil.which("initdb")
    return os.path.dirname(found) if found and shutil.which("pg_ctl") else None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def private_pg_unavailable() -> str | None:
    """None when a private cluster can be started here, else why not (a skip reason)."""
    if _pg_bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (initdb refuses to run as root)"
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run initdb as"
    return None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster for one test: initdb'd on a temp dir, on a free port.

    Trust authentication for `postgres` on 127.0.0.1; fsync off and small buffers so it starts
    in about a second. `stop()` and `start()` / `restart()` keep the port and the data, so URLs
    handed out stay valid across them. `close()` (or leaving the `with` block) stops the server
    immediately and deletes everything.
    """

    def __init__(self) -> None:
        reason = private_pg_unavailable()
        if reason:
            raise RuntimeError(reason)
        self.bindir = _pg_bindir() or ""
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="engine-pg-"))
        self.data = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self.running = False
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            import pwd

            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.dir, 0o700)
        self._initdb()

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self._ctl("start", "-w", "-t", "60", "-l", str(self.logfile))
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._ctl("stop", "-w", "-t", "60", "-m", mode)
        self.running = False

    def restart(self, mode: str = "fast") -> None:
        self._ctl("restart", "-w", "-t", "60", "-m", mode, "-l", str(self.logfile))
        self.running = True

    def close(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivatePostgres:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- addresses ------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """The engine's URL for `dbname` on this cluster."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        """A plain libpq / asyncpg DSN for `dbname` on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """Creates database `name`; returns its engine URL."""
        pg_execute(self.dsn(), f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, sql: str, *args: Any, dbname: str = "postgres") -> list[Any]:
        return pg_execute(self.dsn(dbname), sql, *args)

    @property
    def server_log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # -- internals ------------------------------------------------------------------------------

    def _initdb(self) -> None:
        self._run(
            os.path.join(self.bindir, "initdb"),
            "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
            "--no-sync", "--no-instructions",
        )  # fmt: skip
        settings = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "16MB",
            "max_connections": "100",
            "logging_collector": "off",
        }
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# engine tests: a private, throwaway cluster\n")
            for name, value in settings.items():
                conf.write(f"{name} = {value}\n")

    def _ctl(self, *args: str) -> None:
        self._run(os.path.join(self.bindir, "pg_ctl"), "-D", str(self.data), *args)

    def _run(self, *cmd: str) -> None:
        full = ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else list(cmd)
        proc = subprocess.run(
            full, capture_output=True, text=True, timeout=120, cwd=str(self.dir), check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n"
                f"{self.server_log}"
            )


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started private cluster; stopped and removed on exit, whatever happened."""
    cluster = PrivatePostgres()
    # The cluster daemonizes: a SIGTERM to the session would leave it running (tests/reaper.py).
    forget = reaper.on_terminate(cluster.close)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
        forget()


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    """A started private PostgreSQL cluster for one test (skipped with a reason where none can
    be started); always stopped and removed afterwards."""
    reason = private_pg_unavailable()
    if reason:
        pytest.skip(reason)
    with private_postgres() as cluster:
        yield cluster


# -- SQLite: a lock held by another process ---------------------------------------------------

_HOLD_SQLITE_LOCK = """
import sqlite3, sys
# A generous wait for the lock: on a loaded machine the engine may be mid-commit.
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
print("released", flush=True)
"""


class SQLiteLock:
    """Another process holding an SQLite file's write lock until the test releases it.

    `with SQLiteLock(path):` returns once the lock is held and releases it on exit; `release()`
    releases it earlier and returns once the other process let go. Async tests use
    `async with`, which waits off the event loop.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SQLiteLock:
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD_SQLITE_LOCK, self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().strip()
        if line != "locked":
            self.__exit__(None, None, None)
            raise RuntimeError(f"the lock holder did not take the lock of {self.path}: {line!r}")
        return self

    def release(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            out, _ = proc.communicate("\n", timeout=30)
            assert "released" in out, out
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self.release()
        elif proc is not None:
            proc.communicate()
            self._proc = None

    # In async tests the event loop must keep running while the other process waits for the
    # lock (the engine may hold it mid-transaction, needing the loop to finish): off-loop.
    async def __aenter__(self) -> SQLiteLock:
        await asyncio.to_thread(self.__enter__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.__exit__, *exc)


# -- PostgreSQL: a commit held at its last moment ----------------------------------------------


class CommitGate:
    """Holds every commit that inserts a row into `table` (rows matching `when`) at the very end
    of the commit, until the test releases it: a deferred constraint trigger waits for an
    advisory lock the gate holds. With the commit held, the test can cut the connection
    (`TcpProxy.cut`) and then let the commit land (`release`: the server commits, the client
    never hears of it) or lose it (`terminate`, then `release`): a lost connection at an exact
    point of a write, without a timing window.

    Async (`async with CommitGate(dsn, table) as gate:`), on the test's own loop; the gate's
    trigger is dropped on exit. `dsn` is the database's URL (engine or plain), reached directly,
    not through a proxy.
    """

    KEY = 740_140_031  # the advisory lock's key: nothing of the engine's uses advisory locks so

    def __init__(self, dsn: str, table: str, when: str = "true") -> None:
        self.dsn = dsn.replace("postgresql+asyncpg://", "postgresql://", 1)
        self.table = table
        self.when = when
        self.name = f"engine_test_gate_{table}"
        self._conn: Any = None
        self._held = False

    async def __aenter__(self) -> CommitGate:
        import asyncpg

        self._conn = await asyncpg.connect(self.dsn, timeout=30)
        await self._conn.execute(
            f"CREATE OR REPLACE FUNCTION {self.name}() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN PERFORM pg_advisory_xact_lock({self.KEY}); RETURN NULL; END $$; "
            f"CREATE CONSTRAINT TRIGGER {self.name} AFTER INSERT ON {self.table} "
            f"DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN ({self.when}) "
            f"EXECUTE FUNCTION {self.name}()"
        )
        await self._conn.execute(f"SELECT pg_advisory_lock({self.KEY})")
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.release()
            await self._conn.execute(
                f"DROP TRIGGER IF EXISTS {self.name} ON {self.table}; "
                f"DROP FUNCTION IF EXISTS {self.name}()"
            )
        finally:
            await self._conn.close()

    async def waiting(self) -> list[int]:
        """The backends whose commit the gate holds now."""
        rows = await self._conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND wait_event = 'advisory' ORDER BY pid"
        )
        return [int(r["pid"]) for r in rows]

    async def wait_held(self, timeout: float = 60.0) -> int:
        """Returns the pid of a backend held in its commit, once there is one."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (pids := await self.waiting()):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no commit into {self.table} reached the gate in {timeout}s")
            await asyncio.sleep(0.02)
        return pids[0]

    async def terminate(self, pid: int) -> None:
        """Ends the held backend: its transaction rolls back, as a server-side connection
        loss before the commit would."""
        await self._conn.execute("SELECT pg_terminate_backend($1)", pid)

    async def release(self) -> None:
        """Lets the held commits (and every later one) go through."""
        if self._held:
            self._held = False
            await self._conn.execute(f"SELECT pg_advisory_unlock({self.KEY})")

    async def wait_gone(self, pid: int, timeout: float = 60.0) -> None:
        """Returns once backend `pid` has ended (its commit landed or rolled back, and it
        found its client gone)."""
        deadline = asyncio.get_running_loop().time() + timeout
        query = "SELECT 1 FROM pg_stat_activity WHERE pid = $1"
        while await self._conn.fetchval(query, pid):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"backend {pid} still there after {timeout}s")
            await asyncio.sleep(0.02)
