"""`Store(url)` is the store of the URL's dialect; the rest of the engine sees only `Store`."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.dberrors import PostgresErrors, SqliteErrors
from engine.exceptions import DatabaseError
from engine.store import Store
from engine.store_postgres import PostgresStore
from engine.store_sqlite import SQLiteStore


async def test_a_sqlite_url_makes_a_sqlite_store(tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    store = Store(f"sqlite:///{path}", pool_size=3)
    try:
        assert type(store) is SQLiteStore and isinstance(store, Store)
        assert not store.is_postgres and store.errors is SqliteErrors
        assert store.parsed_url.drivername == "sqlite+aiosqlite"
        assert store.missing_file() == str(path)
    finally:
        await store.close()


async def test_a_postgres_url_makes_a_postgres_store() -> None:
    # Creating the engine does not connect: no server is needed here.
    store = Store("postgresql://someone:hunter2@127.0.0.1:1/nowhere", pool_size=3)
    try:
        assert type(store) is PostgresStore and isinstance(store, Store)
        assert store.is_postgres and store.errors is PostgresErrors
        assert store.parsed_url.drivername == "postgresql+asyncpg"
        assert store.missing_file() is None
    finally:
        await store.close()


def test_an_unsupported_url_is_refused_before_choosing_a_dialect() -> None:
    with pytest.raises(DatabaseError, match="is not supported: use sqlite:///PATH"):
        Store("mysql://someone:hunter2@localhost/db")
    with pytest.raises(DatabaseError, match="busy timeout"):
        Store("sqlite:///engine.db?timeout=never")
