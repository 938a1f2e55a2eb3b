"""signal ids: a dedupe id per signal, and a send's token and runs on events and signals

Revision ID: 0014_signal_ids
Revises: 0010_children
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014_signal_ids"
down_revision = "0010_children"
branch_labels = None
depends_on = None

Json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    # A send retried after its commit's answer was lost finds its own row by this token (one
    # per Engine.send_event / Engine.signal call) and answers what that commit did.
    op.add_column("engine_events", sa.Column("send_token", sa.String(length=64), nullable=True))
    # The runs the event woke and started, as its sender was told (such a retry answers them).
    op.add_column("engine_events", sa.Column("run_ids", Json, nullable=True))
    # `engine runs signal --id`: a second signal with this id to the same run is a no-op. A
    # signal sent without one gets a fresh id; rows from before this revision have none.
    op.add_column("engine_signals", sa.Column("dedupe_id", sa.String(length=300), nullable=True))
    op.add_column("engine_signals", sa.Column("send_token", sa.String(length=64), nullable=True))
    op.create_index(
        "uq_engine_signals_dedupe", "engine_signals", ["run_id", "dedupe_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("uq_engine_signals_dedupe", table_name="engine_signals")
    with op.batch_alter_table("engine_signals") as batch:
        batch.drop_column("send_token")
        batch.drop_column("dedupe_id")
    with op.batch_alter_table("engine_events") as batch:
        batch.drop_column("run_ids")
        batch.drop_column("send_token")
