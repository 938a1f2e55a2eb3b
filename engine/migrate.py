"""Brings a database's schema to head with the engine's Alembic migrations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from .exceptions import DatabaseError
from .schema import VERSION_TABLE
from .store import Store

if TYPE_CHECKING:
    from alembic.config import Config

# The revision the migrations end at (tests/integration/core/test_store.py checks it against
# them). A database already there needs no Alembic, not even its import: one read of its
# revision, ~4 ms of CPU, where importing Alembic and running `command.upgrade` (which loads every
# migration file) cost ~100 ms on each `engine run`, `engine trigger` and `Engine.trigger` of a
# job this process defines.
HEAD = "0012_ratelimit_wait"


def _script_location() -> str:
    try:
        import engine.migrations as installed

        return str(Path(installed.__file__ or "").parent)
    except ImportError:
        return str(Path(__file__).resolve().parent.parent / "migrations")


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", _script_location())
    return config


def _upgrade(connection: Any) -> None:
    from alembic import command

    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def at_head(store: Store) -> bool:
    """Whether the schema is already at HEAD; false where that cannot be read (no tables yet,
    or the database unreachable: the upgrade then says why)."""
    try:
        async with store.read() as conn:
            found = (await conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))).all()
    except DatabaseError:
        return False
    return [row[0] for row in found] == [HEAD]


async def upgrade(store: Store) -> None:
    if await at_head(store):
        return
    async with store.begin() as conn:
        # Concurrent `engine run` start-ups upgrade one at a time (PostgreSQL).
        await store.lock_for_migration(conn)
        await conn.run_sync(_upgrade)
