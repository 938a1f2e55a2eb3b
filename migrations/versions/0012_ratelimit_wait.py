"""ratelimit_wait: the limiter's wait marker in its own column, out of `engine_tasks.error`;
the images a call made, for their price (`engine_task_usage.images`, `image_size`,
`image_quality`)

Revision ID: 0012_ratelimit_wait
Revises: 0013_claim_index
Create Date: 2026-11-30
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

from engine.schema import Json

revision = "0012_ratelimit_wait"
down_revision = "0013_claim_index"
branch_labels = None
depends_on = None

_tasks = sa.table(
    "engine_tasks",
    sa.column("id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("error", Json),
    sa.column("rate_limit_wait", Json),
)
# What the limiter wrote as `error` before this column (engine.ratelimit.WAIT_TYPE).
_WAIT_TYPE = "RateLimitWait"


def upgrade() -> None:
    # A WAITING task suspended by the shared limiter: {"rate_limit": name, "at": its place}.
    op.add_column("engine_tasks", sa.Column("rate_limit_wait", Json, nullable=True))
    # Waits already suspended move over, so that `error` only ever holds an error. (A worker
    # still on the code before reads neither: it would reserve again, a place left unused.)
    bind = op.get_bind()
    found = bind.execute(
        sa.select(_tasks.c.id, _tasks.c.error).where(
            _tasks.c.status == "WAITING", _tasks.c.error.is_not(None)
        )
    ).all()
    for task_id, error in found:
        error = _loaded(error)
        if isinstance(error, dict) and error.get("type") == _WAIT_TYPE:
            place = {"rate_limit": error.get("rate_limit"), "at": error.get("at")}
            bind.execute(
                _tasks.update()
                .where(_tasks.c.id == task_id)
                .values(rate_limit_wait=place, error=None)
            )
    # Images are billed per image, by size and quality: 0 and nulls for token-billed calls.
    op.add_column(
        "engine_task_usage",
        sa.Column("images", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("engine_task_usage", sa.Column("image_size", sa.String(40), nullable=True))
    op.add_column("engine_task_usage", sa.Column("image_quality", sa.String(40), nullable=True))


def downgrade() -> None:
    for column in ("image_quality", "image_size", "images"):
        op.drop_column("engine_task_usage", column)
    bind = op.get_bind()
    found = bind.execute(
        sa.select(_tasks.c.id, _tasks.c.rate_limit_wait).where(
            _tasks.c.rate_limit_wait.is_not(None)
        )
    ).all()
    for task_id, place in found:
        place = _loaded(place) or {}
        error = {"type": _WAIT_TYPE, "message": "waiting for a place under a rate limit", **place}
        bind.execute(_tasks.update().where(_tasks.c.id == task_id).values(error=error))
    op.drop_column("engine_tasks", "rate_limit_wait")


def _loaded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value
