"""engine.dberrors on real sqlite3 errors: what the database refuses is permanent, a lock is not."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.dberrors import PostgresErrors, SqliteErrors, is_transient


def _error(db: sqlite3.Connection, sql: str) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as info:
        db.execute(sql)
    return info.value


def test_sqlite_refusals_are_permanent_and_a_lock_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    db = sqlite3.connect(path, isolation_level=None, timeout=0)
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (v != 'bad'))")
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON t WHEN NEW.v = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'poison refused'); END"
    )
    for sql in (
        "INSERT INTO t (v) VALUES (NULL)",  # NOT NULL
        "INSERT INTO t (v) VALUES ('bad')",  # CHECK
        "INSERT INTO t (v) VALUES ('poison')",  # a trigger's RAISE(ABORT)
        "SELECT * FROM missing",  # SQLITE_ERROR
    ):
        assert not is_transient(_error(db, sql), postgres=False), sql

    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN EXCLUSIVE")
    try:
        locked = _error(db, "INSERT INTO t (v) VALUES ('x')")
    finally:
        other.execute("ROLLBACK")
    assert "locked" in str(locked) and SqliteErrors.result_code(locked) == 5
    assert is_transient(locked, postgres=False)
    # Wrapped (SQLAlchemy's .orig, a `raise ... from`), it is found all the same.
    try:
        raise RuntimeError("wrapped") from locked
    except RuntimeError as wrapped:
        assert is_transient(wrapped, postgres=False)


def test_a_lost_connection_is_transient_on_both_dialects() -> None:
    for postgres in (True, False):
        assert is_transient(ConnectionResetError("reset by peer"), postgres=postgres)
        assert not is_transient(OverflowError("timestamp out of range"), postgres=postgres)


def test_a_connection_left_mid_operation_is_broken() -> None:
    import asyncpg

    # What asyncpg raises on a connection whose backend was terminated mid-operation: its
    # protocol (coreproto.pyx) raises InternalClientError; the pool raises InterfaceError.
    for exc in (
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 15; another operation (2) is in progress"
        ),
        asyncpg.exceptions.InterfaceError(
            "cannot perform operation: another operation is in progress"
        ),
    ):
        assert is_transient(exc, postgres=True), exc


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [
        ("08006", True), ("53100", True), ("57P01", True), ("57P03", True), ("40001", True),
        ("40P01", True), ("55P03", True), ("58030", True), ("22P02", False), ("22021", False),
        ("23514", False), ("23505", False), ("42P01", False), ("57014", False),
    ],
)  # fmt: skip
def test_postgres_sqlstates(sqlstate: str, transient: bool) -> None:
    assert PostgresErrors.is_transient(_PgError(sqlstate)) is transient
