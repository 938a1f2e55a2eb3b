"""events: sent events, the index of runs waiting for events and signals, signal mailboxes,
and the event a job starts on (`@job(on_event=...)`)

Revision ID: 0009_events
Revises: 0007_ratelimit
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from engine.schema import UTCDateTime

revision = "0009_events"
down_revision = "0007_ratelimit"
branch_labels = None
depends_on = None

Json = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("engine_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("on_event", sa.String(length=200), nullable=True))
    op.create_index("ix_engine_jobs_on_event", "engine_jobs", ["on_event"])
    op.create_table(
        "engine_events",
        sa.Column("id", sa.String(length=300), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("payload", Json, nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("woke", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("started", sa.Integer(), nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_engine_events_name_sent", "engine_events", ["name", "sent_at"])
    op.create_table(
        "engine_event_waits",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("match_keys", sa.String(length=1000), nullable=True),
        sa.Column("match_hash", sa.String(length=64), nullable=True),
        sa.Column("match_values", Json, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["engine_tasks.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["engine_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index(
        "ix_engine_event_waits_match", "engine_event_waits", ["kind", "name", "match_hash"]
    )
    op.create_index("ix_engine_event_waits_run", "engine_event_waits", ["run_id", "kind", "name"])
    op.create_table(
        "engine_event_keysets",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("match_keys", sa.String(length=1000), nullable=False),
        sa.PrimaryKeyConstraint("name", "match_keys"),
    )
    op.create_table(
        "engine_signals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("payload", Json, nullable=True),
        sa.Column("sent_at", UTCDateTime(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("consumed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["engine_runs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["task_id"], ["engine_tasks.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_engine_signals_run", "engine_signals", ["run_id", "name", "id"])


def downgrade() -> None:
    op.drop_index("ix_engine_signals_run", table_name="engine_signals")
    op.drop_table("engine_signals")
    op.drop_table("engine_event_keysets")
    op.drop_index("ix_engine_event_waits_run", table_name="engine_event_waits")
    op.drop_index("ix_engine_event_waits_match", table_name="engine_event_waits")
    op.drop_table("engine_event_waits")
    op.drop_index("ix_engine_events_name_sent", table_name="engine_events")
    op.drop_table("engine_events")
    op.drop_index("ix_engine_jobs_on_event", table_name="engine_jobs")
    with op.batch_alter_table("engine_jobs", schema=None) as batch_op:
        batch_op.drop_column("on_event")
