"""attempts: every attempt of a task kept (engine_task_attempts), the latest one's worker

Revision ID: 0005_attempts
Revises: 0004_usage
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from engine.schema import UTCDateTime

revision = "0005_attempts"
down_revision = "0004_usage"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("engine_tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempt_started_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("worker", sa.String(length=200), nullable=True))
        batch_op.add_column(
            sa.Column("retry_base", sa.Integer(), nullable=False, server_default="0")
        )
    op.create_table(
        "engine_task_attempts",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("error", Json, nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("ended_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["task_id"], ["engine_tasks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id", "attempt"),
    )


def downgrade() -> None:
    op.drop_table("engine_task_attempts")
    with op.batch_alter_table("engine_tasks", schema=None) as batch_op:
        batch_op.drop_column("retry_base")
        batch_op.drop_column("worker")
        batch_op.drop_column("attempt_started_at")
