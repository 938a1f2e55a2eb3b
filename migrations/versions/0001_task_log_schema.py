"""task log schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from engine.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "engine_jobs",
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("payload_schema", Json, nullable=True),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "version"),
    )
    op.create_table(
        "engine_runs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("job_version", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("payload", Json, nullable=True),
        sa.Column("output", Json, nullable=True),
        sa.Column("output_type", sa.String(length=300), nullable=True),
        sa.Column("error", Json, nullable=True),
        sa.Column("idempotency_key", sa.String(length=300), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_epoch", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("wake_at", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "idempotency_key", name="uq_engine_runs_idempotency"),
    )
    with op.batch_alter_table("engine_runs", schema=None) as batch_op:
        batch_op.create_index("ix_engine_runs_created", ["created_at"], unique=False)
        batch_op.create_index("ix_engine_runs_status_wake", ["status", "wake_at"], unique=False)

    op.create_table(
        "engine_logs",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("parent_path", sa.Text(), nullable=False),
        sa.Column("line", sa.String(length=40), nullable=False),
        sa.Column("level", sa.String(length=10), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("fields", Json, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["engine_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "parent_path", "line"),
    )
    op.create_table(
        "engine_tasks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("parent_path", sa.Text(), nullable=False),
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("params", Json, nullable=True),
        sa.Column("output", Json, nullable=True),
        sa.Column("output_type", sa.String(length=300), nullable=True),
        sa.Column("error", Json, nullable=True),
        sa.Column("due_at", UTCDateTime(), nullable=True),
        sa.Column("poller", sa.String(length=200), nullable=True),
        sa.Column("poll_state", Json, nullable=True),
        sa.Column("next_poll_at", UTCDateTime(), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("completed_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["engine_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "parent_path", "key", name="uq_engine_tasks_identity"),
    )
    with op.batch_alter_table("engine_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_engine_tasks_polls", ["status", "next_poll_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("engine_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_engine_tasks_polls")

    op.drop_table("engine_tasks")
    op.drop_table("engine_logs")
    with op.batch_alter_table("engine_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_engine_runs_status_wake")
        batch_op.drop_index("ix_engine_runs_created")

    op.drop_table("engine_runs")
    op.drop_table("engine_jobs")
