"""streams: the live output runs publish (io.stream.write), one row per chunk

Revision ID: 0011_streams
Revises: 0009_events
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from engine.schema import UTCDateTime

revision = "0011_streams"
down_revision = "0009_events"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "engine_stream_chunks",
        sa.Column("run_id", sa.String(length=40), nullable=False),
        sa.Column("stream", sa.String(length=200), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("task", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("data", Json, nullable=False),
        sa.Column("written_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["engine_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "stream", "seq"),
        sa.UniqueConstraint(
            "run_id", "stream", "task", "attempt", "n", name="uq_engine_stream_writer"
        ),
    )


def downgrade() -> None:
    op.drop_table("engine_stream_chunks")
