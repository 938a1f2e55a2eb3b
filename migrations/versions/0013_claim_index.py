"""claim index: the ready runs of one status in claim order

Revision ID: 0013_claim_index
Revises: 0014_signal_ids
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0013_claim_index"
down_revision = "0014_signal_ids"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The claim reads each status's ready runs in rank order (engine.sql claim_runs): with
    # (status, rank_at) it stops after the runs it takes instead of sorting the whole queue.
    # It replaces the index on rank_at alone, which no query can use once the claim is split
    # by status, so a run's writes keep the same number of indexes to update.
    op.create_index("ix_engine_runs_status_rank", "engine_runs", ["status", "rank_at"])
    op.drop_index("ix_engine_runs_rank", table_name="engine_runs")


def downgrade() -> None:
    op.create_index("ix_engine_runs_rank", "engine_runs", ["rank_at"])
    op.drop_index("ix_engine_runs_status_rank", table_name="engine_runs")
