"""children: a child run's link to its parent run and to the parent's waiting task

Revision ID: 0010_children
Revises: 0008_schedules
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_children"
down_revision = "0008_schedules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A run started by `io.invoke`: its parent run, and the parent's WAITING task (kind
    # "invoke") that the child's end settles. NULL for a run started any other way.
    op.add_column("engine_runs", sa.Column("parent_run_id", sa.String(length=40), nullable=True))
    op.add_column("engine_runs", sa.Column("parent_task_id", sa.Integer(), nullable=True))
    # A run's children: `runs show`, and the cancel cascade.
    op.create_index("ix_engine_runs_parent", "engine_runs", ["parent_run_id"])


def downgrade() -> None:
    op.drop_index("ix_engine_runs_parent", table_name="engine_runs")
    op.drop_column("engine_runs", "parent_task_id")
    op.drop_column("engine_runs", "parent_run_id")
