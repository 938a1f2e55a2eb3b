"""ui: indexes for the dashboard's runs page (filters and search stay fast at 100,000 runs)

Revision ID: 0006_ui
Revises: 0005_attempts
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0006_ui"
down_revision = "0005_attempts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The runs page filtered by job or status, newest first: without these, a rare status
    # or job walks the whole created_at index to fill a page.
    op.create_index("ix_engine_runs_job_created", "engine_runs", ["job_id", "created_at"])
    op.create_index("ix_engine_runs_status_created", "engine_runs", ["status", "created_at"])
    # Search by idempotency key across jobs (the unique constraint leads with job_id).
    op.create_index("ix_engine_runs_idempotency_key", "engine_runs", ["idempotency_key"])


def downgrade() -> None:
    op.drop_index("ix_engine_runs_idempotency_key", table_name="engine_runs")
    op.drop_index("ix_engine_runs_status_created", table_name="engine_runs")
    op.drop_index("ix_engine_runs_job_created", table_name="engine_runs")
