"""usage: tokens and rate-limit headers of paid API calls, one row per task

Revision ID: 0004_usage
Revises: 0003_flow
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from engine.schema import UTCDateTime

revision = "0004_usage"
down_revision = "0003_flow"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "engine_task_usage",
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("provider", sa.String(length=40), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), nullable=False),
        sa.Column("total_tokens", sa.Integer(), nullable=False),
        sa.Column("rate_limits", Json, nullable=True),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["task_id"], ["engine_tasks.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["engine_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_id"),
    )
    op.create_index("ix_engine_task_usage_run", "engine_task_usage", ["run_id"])
    op.create_index("ix_engine_task_usage_recorded", "engine_task_usage", ["recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_engine_task_usage_recorded", table_name="engine_task_usage")
    op.drop_index("ix_engine_task_usage_run", table_name="engine_task_usage")
    op.drop_table("engine_task_usage")
