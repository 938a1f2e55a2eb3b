"""The store's guarantees, checked on the real databases: identity, fencing, claims, schema."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError

from engine import clock
from engine.client import Engine
from engine.exceptions import DatabaseError
from engine.records import Registration, TaskWrite
from engine.schema import metadata
from engine.store import Store


async def _claimed(engine: Engine, job_key: str = "j@1") -> tuple[str, int]:
    await engine.upgrade()
    await engine.store.register_jobs([Registration("j", "1", None)])
    run_id, _ = await engine.store.create_run("j", "1", {}, None)
    (claim,) = await engine.store.claim_runs("w1", 1, 30, [job_key])
    return run_id, claim.epoch


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[Engine]:
    async with Engine(db_url) as opened:
        yield opened


@pytest.fixture
async def sqlite_engine(sqlite_url: str) -> AsyncIterator[Engine]:
    async with Engine(sqlite_url) as opened:
        yield opened


def _task(key: str, status: str = "COMPLETED") -> TaskWrite:
    return TaskWrite("[]", key, "task", key, status, 1, 1, output={"k": key})


async def test_schema_at_head_has_no_drift_from_the_tables(empty_db_url: str) -> None:
    """The migrations, run on an empty database, make exactly the tables engine.schema models."""
    async with Engine(empty_db_url) as engine:
        await engine.upgrade()
    async with Engine(empty_db_url) as engine:
        await engine.upgrade()  # idempotent: a second run at head changes nothing

        def diff(conn: Connection) -> list[Any]:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, metadata))

        async with engine.store.engine.connect() as conn:
            changes = await conn.run_sync(diff)
    # The engine's own version table is Alembic's, not part of the model.
    changes = [
        c for c in changes if not (c[0] == "remove_table" and c[1].name == "engine_alembic_version")
    ]
    assert changes == []


def test_migrate_head_is_the_migrations_head() -> None:
    """`migrate.HEAD` lets a database at head skip Alembic; a migration added without moving it
    would never run on a database at the old head."""
    from alembic.script import ScriptDirectory

    from engine import migrate

    assert ScriptDirectory.from_config(migrate.alembic_config()).get_heads() == [migrate.HEAD]


async def test_an_upgrade_at_head_reads_the_revision_and_one_behind_runs_alembic(
    empty_db_url: str,
) -> None:
    from engine import migrate

    async with Engine(empty_db_url) as engine:
        assert not await migrate.at_head(engine.store)  # no tables yet
        await engine.upgrade()
        assert await migrate.at_head(engine.store)
        # One migration behind (its down step run by Alembic itself): the fast path must not
        # take it for head, and the upgrade brings it back.
        from alembic import command

        def downgrade(conn: Connection) -> None:
            config = migrate.alembic_config()
            config.attributes["connection"] = conn
            command.downgrade(config, "-1")

        async with engine.store.begin() as conn:
            await conn.run_sync(downgrade)
        assert not await migrate.at_head(engine.store)
    async with Engine(empty_db_url) as engine:
        await engine.upgrade()
        assert await migrate.at_head(engine.store)
        async with engine.store.read() as conn:
            columns = await conn.run_sync(
                lambda c: [col["name"] for col in inspect(c).get_columns("engine_tasks")]
            )
        assert "rate_limit_wait" in columns  # what 0012_ratelimit_wait adds


@pytest.mark.postgres
async def test_an_upgrade_with_the_database_unreachable_fails_as_a_transient_outage(
    pg_head_url: str,
) -> None:
    """The fast path's read failing is no answer: the upgrade goes on to Alembic's path, whose
    connection fails too, as a transient DatabaseError (what `engine run` retries through)."""
    from faults import free_port, with_port

    from engine import migrate

    async with Engine(with_port(pg_head_url, free_port())) as engine:  # nothing listens there
        assert not await migrate.at_head(engine.store)
        with pytest.raises(DatabaseError) as raised:
            await engine.upgrade()
    assert raised.value.transient, raised.value


async def test_the_database_refuses_a_second_task_with_one_identity(engine: Engine) -> None:
    run_id, _ = await _claimed(engine)
    insert = text(
        "INSERT INTO engine_tasks (run_id, parent_path, key, kind, name, status, attempts, "
        "seq) VALUES (:r, '[]', 'k', 'task', 'k', 'COMPLETED', 1, 1)"
    )
    async with engine.store.engine.begin() as conn:
        await conn.execute(insert, {"r": run_id})
    with pytest.raises(IntegrityError):
        async with engine.store.engine.begin() as conn:
            await conn.execute(insert, {"r": run_id})


async def test_a_worker_that_lost_its_lease_cannot_record_anything(engine: Engine) -> None:
    run_id, old_epoch = await _claimed(engine)
    assert await engine.store.write_task(run_id, old_epoch, _task("before"))
    # The lease expires and another worker claims the run.
    clock.advance(31)
    (reclaim,) = await engine.store.claim_runs("w2", 1, 30, ["j@1"])
    assert reclaim.id == run_id and reclaim.epoch == old_epoch + 1
    # The old execution is still alive: every write it tries is refused.
    assert not await engine.store.write_task(run_id, old_epoch, _task("late"))
    assert not await engine.store.suspend_run(run_id, old_epoch, None)
    assert not await engine.store.finish_run(run_id, old_epoch, "COMPLETED", output=1)
    keys = [t["key"] for t in await engine.store.get_tasks(run_id)]
    assert keys == ["before"]
    run = await engine.store.get_run(run_id)
    assert run["status"] == "RUNNING" and run["lease_owner"] == "w2"
    # The new owner writes freely.
    assert await engine.store.write_task(run_id, reclaim.epoch, _task("after"))


async def test_a_run_is_claimed_by_one_worker_at_a_time(engine: Engine, db_url: str) -> None:
    await engine.upgrade()
    await engine.store.register_jobs([Registration("j", "1", None)])
    for _ in range(20):
        await engine.store.create_run("j", "1", {}, None)
    stores = [Store(db_url) for _ in range(4)]
    try:
        claims = await asyncio.gather(
            *(s.claim_runs(f"w{i}", 10, 30, ["j@1"]) for i, s in enumerate(stores))
        )
    finally:
        for s in stores:
            await s.close()
    ids = [c.id for batch in claims for c in batch]
    assert len(ids) == 20 and len(set(ids)) == 20


async def test_cancel_fences_out_the_running_execution(engine: Engine) -> None:
    run_id, epoch = await _claimed(engine)
    await engine.cancel(run_id)
    assert not await engine.store.write_task(run_id, epoch, _task("after-cancel"))
    assert (await engine.get_run(run_id))["status"] == "CANCELED"


async def test_unreachable_database_is_one_clear_error() -> None:
    from engine import DatabaseError

    engine = Engine("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    try:
        with pytest.raises(DatabaseError, match=r"127\.0\.0\.1:1/nothing"):
            await engine.list_runs()
    finally:
        await engine.close()


async def test_missing_tables_say_how_to_fix_it(sqlite_engine: Engine) -> None:
    from engine import DatabaseError

    with pytest.raises(DatabaseError, match="engine db upgrade"):
        await sqlite_engine.list_runs()


async def test_concurrent_writes_share_commits_but_are_fenced_one_by_one(engine: Engine) -> None:
    await engine.upgrade()
    await engine.store.register_jobs([Registration("j", "1", None)])
    live, _ = await engine.store.create_run("j", "1", {}, None)
    stale, _ = await engine.store.create_run("j", "1", {}, None)
    claims = {c.id: c.epoch for c in await engine.store.claim_runs("w1", 2, 30, ["j@1"])}
    await engine.cancel(stale)  # bumps its epoch: the claim we hold is stale now
    results = await asyncio.gather(
        *(engine.store.write_task(live, claims[live], _task(f"k{i}")) for i in range(20)),
        engine.store.write_task(stale, claims[stale], _task("late")),
    )
    assert results == [True] * 20 + [False]
    assert len(await engine.store.get_tasks(live)) == 20
    assert await engine.store.get_tasks(stale) == []
