"""Brings a database's schema to head with the engine's Alembic migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

from .store import Store


def _script_location() -> str:
    try:
        import engine.migrations as installed

        return str(Path(installed.__file__ or "").parent)
    except ImportError:
        return str(Path(__file__).resolve().parent.parent / "migrations")


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", _script_location())
    return config


def _upgrade(connection: Any) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def upgrade(store: Store) -> None:
    async with store.begin() as conn:
        # Concurrent `engine run` start-ups upgrade one at a time (PostgreSQL).
        await store.lock_for_migration(conn)
        await conn.run_sync(_upgrade)
