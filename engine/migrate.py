"""Brings a database's schema to head with the engine's Alembic migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from .store import Store

# Any fixed number: serializes concurrent `engine run` start-ups on one PostgreSQL database.
_PG_LOCK_ID = 0x656E67696E65


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
        if store.is_postgres:
            await conn.execute(text(f"SELECT pg_advisory_xact_lock({_PG_LOCK_ID})"))
        await conn.run_sync(_upgrade)
