"""schedules: cron schedules, delayed runs and run deadlines

Revision ID: 0008_schedules
Revises: 0011_streams
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from engine.schema import UTCDateTime

revision = "0008_schedules"
down_revision = "0011_streams"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_schedules",
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("expression", sa.String(length=100), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("job_version", sa.String(length=100), nullable=False),
        sa.Column("missed", sa.String(length=16), nullable=False, server_default="latest"),
        sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("next_fire_at", UTCDateTime(), nullable=False),
        sa.Column("last_tick_at", UTCDateTime(), nullable=True),
        sa.Column("last_run_id", sa.String(length=40), nullable=True),
        sa.Column("registered_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "expression", "timezone"),
    )
    op.create_index("ix_engine_schedules_due", "engine_schedules", ["next_fire_at"])
    with op.batch_alter_table("engine_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timeout", sa.Float(), nullable=True))
    with op.batch_alter_table("engine_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("deadline_at", UTCDateTime(), nullable=True))
        batch_op.create_index("ix_engine_runs_status_deadline", ["status", "deadline_at"])


def downgrade() -> None:
    with op.batch_alter_table("engine_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_engine_runs_status_deadline")
        batch_op.drop_column("deadline_at")
    with op.batch_alter_table("engine_jobs", schema=None) as batch_op:
        batch_op.drop_column("timeout")
    op.drop_index("ix_engine_schedules_due", table_name="engine_schedules")
    op.drop_table("engine_schedules")
