"""flow control: priority and concurrency limits on runs and registered jobs

Revision ID: 0003_flow
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from engine.schema import UTCDateTime

revision = "0003_flow"
down_revision = "0002"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("engine_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("concurrency", Json, nullable=True))
    with op.batch_alter_table("engine_runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("rank_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("concurrency_key", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("concurrency_limit", sa.Integer(), nullable=True))
    # Runs queued before this migration are claimed in trigger order, as they were.
    op.execute("UPDATE engine_runs SET rank_at = created_at")
    with op.batch_alter_table("engine_runs", schema=None) as batch_op:
        batch_op.create_index("ix_engine_runs_rank", ["rank_at"], unique=False)
        batch_op.create_index(
            "ix_engine_runs_concurrency", ["job_id", "concurrency_key", "status"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("engine_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_engine_runs_concurrency")
        batch_op.drop_index("ix_engine_runs_rank")
        batch_op.drop_column("concurrency_limit")
        batch_op.drop_column("concurrency_key")
        batch_op.drop_column("rank_at")
        batch_op.drop_column("priority")
    with op.batch_alter_table("engine_jobs", schema=None) as batch_op:
        batch_op.drop_column("concurrency")
        batch_op.drop_column("priority")
