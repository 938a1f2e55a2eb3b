"""The SQL of child runs (`io.invoke`): starting children, and what a run's end does to its
parent (settled by `Store._settle_waiting`) and to its children (canceled with it).

Kept beside engine.sql (same helpers, executed only by engine.store), so that runs without
children, the common case, never run these.
"""

from __future__ import annotations

from sqlalchemy import String, bindparam
from sqlalchemy.sql.elements import TextClause

from .schema import Json, UTCDateTime
from .sql import _t

# The open states of a run: what a cancel (or a cascade) may end.
_OPEN = "('QUEUED', 'WAITING', 'RUNNING')"


class ChildStatements:
    def __init__(self, postgres: bool) -> None:
        share = " FOR SHARE" if postgres else ""

        def stamp(param: str) -> str:
            return f"CAST({param} AS timestamptz)" if postgres else param

        later = "GREATEST" if postgres else "MAX"
        ended = f"{later}({stamp(':now')}, COALESCE(started_at, created_at))"
        # Starting children is fenced like every write of an execution: the parent's lease
        # epoch, its row shared until the transaction ends (a concurrent claim or cancel waits).
        self.fence = _t(
            f"SELECT 1 FROM engine_runs WHERE id = :run_id AND lease_epoch = :epoch{share}"
        )
        # The parent's WAITING task, one per child. A new attempt (after `runs retry`) takes
        # the row over; the same attempt again (a commit retried after a lost connection) leaves
        # it as it is, even if the child has settled it meanwhile.
        self.open_invoke = _t(
            "INSERT INTO engine_tasks (run_id, parent_path, key, kind, name, status, attempts, "
            "params, seq, started_at, attempt_started_at, worker) VALUES (:run_id, "
            ":parent_path, :key, 'invoke', :name, 'WAITING', :attempts, :params, :seq, :now, "
            ":now, :worker) ON CONFLICT (run_id, parent_path, key) DO UPDATE SET "
            "status = 'WAITING', attempts = excluded.attempts, params = excluded.params, "
            "output = NULL, output_type = NULL, error = NULL, due_at = NULL, "
            "completed_at = NULL, attempt_started_at = excluded.attempt_started_at, "
            "worker = excluded.worker WHERE engine_tasks.attempts < excluded.attempts",
            params=Json,
            now=UTCDateTime,
        )
        # The child, linked to that task; its id is deterministic (engine.children), so the
        # same start committed twice creates it once.
        self.create_child = _t(
            "INSERT INTO engine_runs (id, job_id, job_version, status, payload, attempt, "
            "lease_epoch, created_at, priority, rank_at, concurrency_key, concurrency_limit, "
            "parent_run_id, parent_task_id, deadline_at) VALUES (:id, :job_id, :job_version, "
            "'QUEUED', :payload, 0, 0, :now, :priority, :rank_at, :concurrency_key, "
            ":concurrency_limit, "
            ":run_id, (SELECT id FROM engine_tasks WHERE run_id = :run_id "
            "AND parent_path = :parent_path AND key = :key), :deadline_at) "
            "ON CONFLICT (id) DO NOTHING",
            # One type for a parameter used twice (asyncpg deduces one per use otherwise).
            run_id=String(),
            payload=Json,
            now=UTCDateTime,
            rank_at=UTCDateTime,
            deadline_at=UTCDateTime,
        )
        # Whether the parent waits for other children than the one ending (engine.children,
        # CHILD_WAKE_DELAY).
        self.other_children_open = _t(
            "SELECT 1 FROM engine_tasks WHERE run_id = :run_id AND status = 'WAITING' "
            "AND kind = 'invoke' AND id <> :task_id LIMIT 1"
        )
        # Lock order: a run's parent before the run itself, everywhere a child ends while its
        # parent may be canceled at once (PostgreSQL; SQLite serializes writers anyway).
        self.parent_of = _t("SELECT parent_run_id FROM engine_runs WHERE id = :id")
        self.lock_run: TextClause | None = (
            _t("SELECT 1 FROM engine_runs WHERE id = :id FOR NO KEY UPDATE") if postgres else None
        )
        # The cascade, one generation per statement.
        self.cancel_children = _t(
            f"UPDATE engine_runs SET status = 'CANCELED', error = :error, completed_at = {ended}, "
            "wake_at = NULL, lease_owner = NULL, lease_expires_at = NULL, "
            f"lease_epoch = lease_epoch + 1 WHERE parent_run_id IN :ids AND status IN {_OPEN} "
            "RETURNING id",
            error=Json,
            now=UTCDateTime,
        ).bindparams(bindparam("ids", expanding=True))
        self.cancel_tasks_of = _t(
            "UPDATE engine_tasks SET status = 'CANCELED', completed_at = :now, "
            "next_poll_at = NULL WHERE run_id IN :ids AND status IN ('RUNNING', 'WAITING')",
            now=UTCDateTime,
        ).bindparams(bindparam("ids", expanding=True))
        # `runs show`: the children, in the order the parent reached their tasks, and the
        # parent's task of a child.
        self.children = _t(
            "SELECT r.id, r.job_id, r.job_version, r.status, r.created_at, r.completed_at, "
            "t.parent_path, t.key FROM engine_runs r "
            "LEFT JOIN engine_tasks t ON t.id = r.parent_task_id "
            "WHERE r.parent_run_id = :id ORDER BY t.seq, r.created_at, r.id"
        ).columns(created_at=UTCDateTime, completed_at=UTCDateTime)
        self.task_path = _t("SELECT parent_path, key FROM engine_tasks WHERE id = :id")
        # The usage of every descendant of a run (its children, theirs...): `runs show` rolls
        # it up into the run's own.
        self.descendant_usage = _t(
            "WITH RECURSIVE tree(id) AS (SELECT id FROM engine_runs WHERE parent_run_id = :id "
            "UNION SELECT r.id FROM engine_runs r JOIN tree ON r.parent_run_id = tree.id) "
            "SELECT u.provider, u.model, u.prompt_tokens, u.completion_tokens, u.cached_tokens, "
            "u.reasoning_tokens, u.total_tokens, u.images, u.image_size, u.image_quality, "
            "u.recorded_at FROM engine_task_usage u "
            "WHERE u.run_id IN (SELECT id FROM tree)"
        ).columns(recorded_at=UTCDateTime)
