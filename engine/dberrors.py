"""Which database errors are worth retrying: one small class per dialect.

A *transient* error says nothing about the write itself (the connection dropped, the server is
restarting, the file is locked or the disk is full): the same write succeeds later, so callers
retry it. A *permanent* error is the database refusing this very write (a constraint, a trigger,
a value it cannot store): retrying it would fail the same way forever.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and what it wraps: SQLAlchemy's `.orig`, then `__cause__`/`__context__`."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        todo += [orig if isinstance(orig, BaseException) else None]
        todo += [current.__cause__, current.__context__]


def is_connection_error(exc: BaseException) -> bool:
    """The connection itself is broken: it must not go back to the pool to fail again."""
    for err in _chain(exc):
        if isinstance(err, DBAPIError) and err.connection_invalidated:
            return True
        if isinstance(err, OSError | ConnectionError | TimeoutError | PoolTimeoutError):
            return True
        name = type(err).__name__
        if name in ("ConnectionDoesNotExistError", "ConnectionFailureError"):
            return True
        if name.endswith("InterfaceError") and "connection is closed" in str(err):
            return True
        # asyncpg: an operation cut short by a terminated backend left the protocol mid-way;
        # the connection is unusable (seen under pg_terminate_backend in the soak).
        if name.endswith("InterfaceError") and "another operation" in str(err):
            return True
        # asyncpg's own protocol state machine gave up ("cannot switch to state N; another
        # operation is in progress"): the client's fault after a cut, never the server's answer.
        if name == "InternalClientError":
            return True
        if name == "ProgrammingError" and "closed database" in str(err):
            return True
    return False


async def invalidate_if_broken(conn: AsyncConnection, exc: BaseException) -> None:
    """A connection that failed as a connection must not go back to the pool to fail again."""
    if is_connection_error(exc):
        with contextlib.suppress(Exception):
            await conn.invalidate()


class PostgresErrors:
    """PostgreSQL: by SQLSTATE (asyncpg's `.sqlstate`, also on SQLAlchemy's wrapper)."""

    # 08 connection exception, 53 insufficient resources (53100 disk full), 58 system error.
    TRANSIENT_CLASSES = frozenset({"08", "53", "58"})
    # Admin/crash shutdown, cannot connect now, serialization failure, deadlock, lock not
    # available. Classes 22 (data), 23 (integrity, CHECK, trigger), 42 (syntax) are permanent.
    TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01", "55P03"})

    @classmethod
    def sqlstate(cls, exc: BaseException) -> str | None:
        for err in _chain(exc):
            state = getattr(err, "sqlstate", None) or getattr(err, "pgcode", None)
            if isinstance(state, str) and len(state) == 5:
                return state
        return None

    @classmethod
    def is_transient(cls, exc: BaseException) -> bool:
        state = cls.sqlstate(exc)
        if state is not None:
            return state[:2] in cls.TRANSIENT_CLASSES or state in cls.TRANSIENT_CODES
        return is_connection_error(exc)


class SqliteErrors:
    """SQLite: by primary result code (`sqlite3.Error.sqlite_errorcode`, Python 3.11+)."""

    # BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL: the file, not the write. CONSTRAINT,
    # TOOBIG, MISMATCH, RANGE and ERROR (a trigger's RAISE(ABORT), bad SQL) are permanent.
    TRANSIENT_CODES = frozenset({5, 6, 10, 13, 14, 15})

    @classmethod
    def result_code(cls, exc: BaseException) -> int | None:
        for err in _chain(exc):
            code = getattr(err, "sqlite_errorcode", None)
            if isinstance(err, sqlite3.Error) and isinstance(code, int):
                return code & 0xFF  # the primary code of an extended one
        return None

    @classmethod
    def is_transient(cls, exc: BaseException) -> bool:
        code = cls.result_code(exc)
        if code is not None:
            return code in cls.TRANSIENT_CODES
        return is_connection_error(exc)


def is_transient(exc: BaseException, *, postgres: bool) -> bool:
    """True when the same statement may well succeed if tried again later."""
    return (PostgresErrors if postgres else SqliteErrors).is_transient(exc)
