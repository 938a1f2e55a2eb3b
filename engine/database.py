"""The engine's connection to its database, and what each dialect must provide.

`Database` parses and checks the URL, owns the SQLAlchemy engine, turns driver failures into
DatabaseError (classified transient or permanent by the dialect's `errors`, engine.dberrors),
and declares the few operations each dialect implements its own way: engine setup, the hot
write path, the raw replay reads, the wake-up side task, NOTIFY and the migration lock.
engine.store builds every statement the engine issues on top of it; engine.store_sqlite and
engine.store_postgres are the two dialects.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, SQLAlchemyError

from . import secrets
from .dberrors import PostgresErrors, SqliteErrors
from .exceptions import DatabaseError
from .records import ChunkWrite, TaskRow
from .sql import DriverSQL
from .writes import Write

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///engine.db"


class Database:
    """A database URL's engine and error translation; see engine.store for `Store`."""

    # Set by each dialect's class.
    is_postgres: ClassVar[bool]
    errors: ClassVar[type[SqliteErrors] | type[PostgresErrors]]
    # The scheduler's safety net between wake-ups (seconds): new work is announced by NOTIFY
    # (PostgreSQL) or noticed by watching the SQLite file's data_version.
    idle_poll: ClassVar[float]

    def __init__(self, database_url: str | None = None, *, pool_size: int = 10) -> None:
        self.url = database_url or DEFAULT_DATABASE_URL
        parsed = parse_url(self.url)
        self.dialect = parsed.get_backend_name()
        self.parsed_url = parsed
        secrets.register(parsed.password)
        self.engine: AsyncEngine = self._make_engine(parsed, pool_size)

    # -- what each dialect provides ---------------------------------------------------------------

    def _make_engine(self, url: URL, pool_size: int) -> AsyncEngine:
        raise NotImplementedError

    async def _hot(self, write: Write) -> bool:
        """Runs one hot-path write through the driver; True when its first statement changed
        exactly one row."""
        raise NotImplementedError

    async def _read_replay_rows(self, driver: Any, run_id: str) -> tuple[list[Any], list[Any]]:
        """The raw rows of `raw_load_tasks` and `raw_load_log_keys`, through the driver."""
        raise NotImplementedError

    def _task_row(self, row: tuple[Any, ...]) -> TaskRow:
        raise NotImplementedError

    # How long a stream's follower waits between reads when no wake-up came (seconds).
    stream_poll: ClassVar[float]
    # The execution options of a `read()` connection: no BEGIN, no COMMIT, no lock.
    read_options: ClassVar[dict[str, Any]]

    async def _write_chunks(self, run_id: str, epoch: int, chunks: Sequence[ChunkWrite]) -> bool:
        """Records stream chunks in one fenced transaction (engine.sql_streams)."""
        raise NotImplementedError

    async def read_chunks(
        self, run_id: str, stream: str, after: int, limit: int
    ) -> tuple[str | None, list[tuple[Any, ...]]]:
        """The run's status (None: no such run), then the chunks of `stream` after `after`:
        (seq, task, attempt, data, written_at, restart) rows, in order."""
        raise NotImplementedError

    def stream_wakeups(
        self, run_id: str, woken: asyncio.Event
    ) -> AbstractAsyncContextManager[None]:
        """While entered, sets `woken` when another process may have written to the run's
        streams or ended it (PostgreSQL: LISTEN); SQLite has no such news (followers poll)."""
        return nullcontext()

    async def announce_stream_end(self, run_id: str) -> None:
        """Tells the run's stream followers in other processes that it ended (best effort)."""

    async def write_returning(
        self, sql: DriverSQL, values: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        """One statement that writes and returns one row (None: no row), committed on its own
        in a single trip to the database (no separate BEGIN and COMMIT): the rate limiter's
        reservation."""
        raise NotImplementedError

    def watch(self, hear: Callable[..., None]) -> asyncio.Task[None]:
        """Starts the worker's wake-up side task: it calls `hear()` whenever another process
        may have written (new work, a cancel), and retries quietly through outages."""
        raise NotImplementedError

    async def _notify(self, conn: AsyncConnection) -> None:
        """Announces new work to other processes, inside the transaction that made it."""

    async def lock_for_migration(self, conn: AsyncConnection) -> None:
        """Serializes concurrent schema upgrades, until `conn`'s transaction ends."""

    def missing_file(self) -> str | None:
        """The path of a SQLite database file that does not exist yet (connecting creates it)."""
        return None

    def _translate(self, exc: BaseException) -> BaseException:
        return _database_error(self, exc) if isinstance(exc, Exception) else exc

    async def close(self) -> None:
        await self.engine.dispose()

    def begin(self) -> Any:
        """A transaction; driver errors come out as DatabaseError."""
        return _Transaction(self)

    def read(self) -> Any:
        """A connection for reads only (the dashboard): each statement is committed on its own,
        one trip to the database with no BEGIN or COMMIT, and on SQLite takes no write lock, so
        a reader never delays a worker. Each statement sees what had committed when it ran;
        there is no snapshot across statements. Driver errors come out as DatabaseError."""
        return _Transaction(self, read=True)

    # Schedulers in this process that share the database hear of new work without a query;
    # called after the commit, so what they claim is visible to them.
    def add_local_listener(self, callback: Callable[[], None]) -> None:
        _local_listeners.setdefault(self.url, set()).add(callback)

    def remove_local_listener(self, callback: Callable[[], None]) -> None:
        _local_listeners.get(self.url, set()).discard(callback)

    def _wake_local(self) -> None:
        for callback in list(_local_listeners.get(self.url, ())):
            callback()


_local_listeners: dict[str, set[Callable[[], None]]] = {}


class _Transaction:
    """`async with store.begin() as conn`, translating driver failures into DatabaseError."""

    def __init__(self, store: Database, read: bool = False) -> None:
        self.store = store
        self.read = read
        self.ctx: Any = None

    async def __aenter__(self) -> AsyncConnection:
        try:
            if not self.read:
                self.ctx = self.store.engine.begin()
                return await self.ctx.__aenter__()  # type: ignore[no-any-return]
            self.ctx = self.store.engine.connect()
            conn: AsyncConnection = await self.ctx.__aenter__()
            return await conn.execution_options(**self.store.read_options)
        except (OSError, SQLAlchemyError) as exc:
            raise _database_error(self.store, exc) from exc

    async def __aexit__(self, *exc_info: Any) -> None:
        try:
            await self.ctx.__aexit__(*exc_info)
        except (OSError, SQLAlchemyError) as exc:
            raise _database_error(self.store, exc) from exc
        if exc_info[1] is not None and isinstance(exc_info[1], (OSError, SQLAlchemyError)):
            raise _database_error(self.store, exc_info[1]) from exc_info[1]


def _hide_password(url: str) -> str:
    """`url` with what looks like its password replaced by ***, for a URL too broken to parse."""
    hidden = re.sub(r"^([^:/@]*://[^:/@]*):.*@", r"\1:***@", url)
    return re.sub(r":[^:@]*@", ":***@", hidden)  # no "://": any "user:password@"


def _database_error(store: Database, exc: BaseException) -> DatabaseError:
    if isinstance(exc, DatabaseError):
        return exc
    safe_url = store.parsed_url.render_as_string(hide_password=True)
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0:1]
    reason = detail[0] if detail else type(exc).__name__
    transient = store.errors.is_transient(exc)
    if isinstance(exc, (OSError, OperationalError, DBAPIError)) and (
        "no such table" in reason or ("does not exist" in reason and "relation" in reason)
    ):
        return DatabaseError(
            f"database {safe_url} has no engine tables: run `engine db upgrade` "
            f"(or start `engine run`, which upgrades it) ({reason})"
        )
    return DatabaseError(f"database {safe_url}: {reason}", transient=transient)


# Exactly the schemes the engine accepts (each with the async driver it runs on), and how the
# refusal of any other one lists them.
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
SUPPORTED_URLS = (
    "sqlite:///PATH or sqlite+aiosqlite:///PATH (SQLite), or postgresql://, postgres:// or "
    "postgresql+asyncpg://USER@HOST/DB (PostgreSQL)"
)


def parse_url(url: str) -> URL:
    """The URL, checked, with the engine's async driver (plain `sqlite://`, `postgresql://` and
    `postgres://` URLs included)."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(
            f"database URL {_hide_password(url)!r} is not a URL: use "
            "sqlite+aiosqlite:///engine.db or postgresql+asyncpg://user@host/db"
        ) from exc
    except ValueError as exc:  # SQLAlchemy parses the port with int()
        raise DatabaseError(
            f"database URL {_hide_password(url)!r}: the port is not a number: "
            "use postgresql+asyncpg://user@host:5432/db"
        ) from exc
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise DatabaseError(
            f"database URL {parsed.render_as_string(hide_password=True)!r} is not supported: "
            f"use {SUPPORTED_URLS}"
        )
    parsed = parsed.set(drivername=driver)
    return parsed
