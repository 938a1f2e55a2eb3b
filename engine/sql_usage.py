"""The SQL of `engine_task_usage`: recording a paid call's tokens, and reading them back.

Kept beside engine.sql (same helpers, executed only by engine.store) so that tasks without
usage, the hot path, are untouched: their writes never mention this table.
"""

from __future__ import annotations

from sqlalchemy import String, bindparam, text
from sqlalchemy.sql.elements import TextClause

from .schema import Json, UTCDateTime
from .sql import _driver_sql, _t

USAGE_FIELDS = (
    "provider",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
    "images",
    "image_size",
    "image_quality",
    "rate_limits",
)
_TOKENS = (
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "total_tokens",
)


def _insert(where: str) -> str:
    """Upsert the usage of the task `where` selects (a task is found by its identity or id)."""
    values = ", ".join(f":{f}" for f in USAGE_FIELDS)
    updates = ", ".join(f"{f} = excluded.{f}" for f in (*USAGE_FIELDS, "recorded_at"))
    return (
        f"INSERT INTO engine_task_usage (task_id, run_id, {', '.join(USAGE_FIELDS)}, recorded_at) "
        f"SELECT id, run_id, {values}, :recorded_at FROM engine_tasks WHERE {where} "
        f"ON CONFLICT (task_id) DO UPDATE SET {updates}"
    )


class UsageStatements:
    def __init__(self, postgres: bool) -> None:
        # With a task's outcome, in the hot path's transaction (engine.writes).
        self.raw_write = _driver_sql(
            _insert("run_id = :run_id AND parent_path = :parent_path AND key = :key"), postgres
        )
        # With a finished poll (the scheduler's write).
        self.write_for_poll: TextClause = text(_insert("id = :id")).bindparams(
            bindparam("rate_limits", type_=Json), bindparam("recorded_at", type_=UTCDateTime)
        )
        self.for_run = _t(
            "SELECT t.parent_path, t.key, u.provider, u.model, u.prompt_tokens, "
            "u.completion_tokens, u.cached_tokens, u.reasoning_tokens, u.total_tokens, "
            "u.images, u.image_size, u.image_quality, "
            "u.rate_limits, u.recorded_at FROM engine_task_usage u "
            "JOIN engine_tasks t ON t.id = u.task_id WHERE u.run_id = :run_id"
        ).columns(rate_limits=Json, recorded_at=UTCDateTime)
        day = (
            "to_char(u.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            if postgres
            else "substr(u.recorded_at, 1, 10)"
        )
        since = "CAST(:since AS timestamptz)" if postgres else ":since"
        sums = ", ".join(f"SUM(u.{t}) AS {t}" for t in _TOKENS)
        self.report = _t(
            f"SELECT r.job_id, u.provider, u.model, {day} AS day, COUNT(*) AS calls, "
            f"COUNT(DISTINCT u.run_id) AS runs, {sums}, SUM(u.images) AS images, "
            "u.image_size, u.image_quality "
            "FROM engine_task_usage u JOIN engine_runs r ON r.id = u.run_id "
            f"WHERE ({since} IS NULL OR u.recorded_at >= {since}) "
            "AND (:job_id IS NULL OR r.job_id = :job_id) "
            # Calls that only brought rate-limit headers (a retrieve, a list) spent nothing.
            "AND (u.model IS NOT NULL OR u.total_tokens > 0) "
            # Images are priced by size and quality: one row for each.
            f"GROUP BY r.job_id, u.provider, u.model, u.image_size, u.image_quality, {day} "
            f"ORDER BY {day}, r.job_id, u.model",
            since=UTCDateTime,
            job_id=String(),
        )
