"""ratelimit: one row per shared rate-limit key, its GCRA state

Revision ID: 0007_ratelimit
Revises: 0006_ui
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_ratelimit"
down_revision = "0006_ui"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engine_rate_limits",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("requests_tat", sa.Float(), nullable=False),
        sa.Column("tokens_tat", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("engine_rate_limits")
