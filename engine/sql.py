"""Every SQL statement of the engine, as text: the whole data model's behaviour in one file.

`engine.store` executes these and nothing else. The few dialect differences are the `share`
and `skip` fragments: PostgreSQL takes row locks (claims skip locked rows; fenced writes share
the run row so a concurrent claim waits for them), SQLite serializes writers by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, String, bindparam, column, text
from sqlalchemy.sql.elements import TextClause

from .schema import Json, UTCDateTime


def _t(sql: str, **types: Any) -> TextClause:
    clause = text(sql)
    if types:
        clause = clause.bindparams(*(bindparam(name, type_=t) for name, t in types.items()))
    return clause


# --------------------------------------------------------------------------------

_RUN_COLUMNS = (
    "id, job_id, job_version, status, payload, output, output_type, error, idempotency_key, "
    "attempt, lease_owner, lease_epoch, created_at, started_at, completed_at, wake_at, "
    "priority, concurrency_key, concurrency_limit, deadline_at, parent_run_id, parent_task_id"
)
_RUN_TYPES: dict[str, Any] = dict(
    payload=Json,
    output=Json,
    error=Json,
    created_at=UTCDateTime,
    started_at=UTCDateTime,
    completed_at=UTCDateTime,
    wake_at=UTCDateTime,
    lease_expires_at=UTCDateTime,
    deadline_at=UTCDateTime,
)


class Statements:
    """The SQL text, compiled once per store; `{lock}` and friends are the dialect's pieces."""

    def __init__(self, postgres: bool) -> None:
        share = " FOR SHARE" if postgres else ""
        # Control acts (cancel, retry) lock the run row before reading its status, so the
        # status they report is the one their guarded update changes (SQLite: BEGIN IMMEDIATE
        # already serializes writers).
        lock = " FOR UPDATE" if postgres else ""

        def stamp(param: str) -> str:
            # PostgreSQL cannot infer a parameter's type inside a CASE with a NULL branch.
            return f"CAST({param} AS timestamptz)" if postgres else param

        def later(a: str, b: str) -> str:
            # SQLite's two-argument MAX is its scalar GREATEST (its timestamps are ISO text).
            return f"GREATEST({a}, {b})" if postgres else f"MAX({a}, {b})"

        # A run's times come from the clocks of several processes (the trigger's, each
        # worker's): each is kept no earlier than the one before it, so they read in order.
        ended = later(stamp(":now"), "COALESCE(started_at, created_at)")
        skip = " FOR UPDATE SKIP LOCKED" if postgres else ""
        now = dict(now=UTCDateTime)
        fence = (
            f"EXISTS (SELECT 1 FROM engine_runs WHERE id = :run_id AND lease_epoch = :epoch{share})"
        )

        self.register_job = _t(
            "INSERT INTO engine_jobs (job_id, version, payload_schema, registered_at, priority, "
            "concurrency, on_event, timeout) VALUES (:job_id, :version, :payload_schema, "
            ":registered_at, :priority, :concurrency, :on_event, :timeout) "
            "ON CONFLICT (job_id, version) DO UPDATE SET payload_schema = excluded.payload_schema, "
            "registered_at = excluded.registered_at, priority = excluded.priority, "
            "concurrency = excluded.concurrency, on_event = excluded.on_event, "
            "timeout = excluded.timeout",
            payload_schema=Json,
            concurrency=Json,
            on_event=_str(),
            registered_at=UTCDateTime,
        )
        self.job_versions = _t(
            "SELECT job_id, version, payload_schema, registered_at, priority, concurrency, "
            "on_event, timeout FROM engine_jobs "
            "WHERE (:job_id IS NULL OR job_id = :job_id) ORDER BY job_id, registered_at",
            job_id=_str(),
        ).columns(payload_schema=Json, concurrency=Json, registered_at=UTCDateTime)
        # Live workers: a row's `expires_at` is pushed forward by every heartbeat; a worker that
        # died simply stops being live. Rows dead for a day are swept when a worker starts.
        self.upsert_worker = _t(
            "INSERT INTO engine_workers (worker_id, host, pid, jobs, started_at, last_seen_at, "
            "expires_at) VALUES (:worker_id, :host, :pid, :jobs, :now, :now, :expires) "
            "ON CONFLICT (worker_id) DO UPDATE SET jobs = excluded.jobs, "
            "last_seen_at = excluded.last_seen_at, expires_at = excluded.expires_at",
            jobs=Json,
            now=UTCDateTime,
            expires=UTCDateTime,
        )
        self.sweep_workers = _t(
            "DELETE FROM engine_workers WHERE expires_at < :before", before=UTCDateTime
        )
        self.delete_worker = _t("DELETE FROM engine_workers WHERE worker_id = :worker_id")
        self.live_workers = _t(
            "SELECT worker_id, host, pid, jobs, started_at, last_seen_at, expires_at "
            "FROM engine_workers WHERE expires_at > :now ORDER BY started_at, worker_id",
            now=UTCDateTime,
        ).columns(
            jobs=Json, started_at=UTCDateTime, last_seen_at=UTCDateTime, expires_at=UTCDateTime
        )
        self.create_run = _t(
            "INSERT INTO engine_runs (id, job_id, job_version, status, payload, idempotency_key, "
            "attempt, lease_epoch, created_at, priority, rank_at, concurrency_key, "
            "concurrency_limit, wake_at, deadline_at) VALUES (:id, :job_id, :job_version, "
            "'QUEUED', :payload, :idempotency_key, 0, 0, :created_at, :priority, :rank_at, "
            ":concurrency_key, :concurrency_limit, :wake_at, :deadline_at) "
            "ON CONFLICT (job_id, idempotency_key) DO NOTHING",
            payload=Json,
            created_at=UTCDateTime,
            rank_at=UTCDateTime,
            wake_at=UTCDateTime,
            deadline_at=UTCDateTime,
            concurrency_key=_str(),
            concurrency_limit=Integer(),
        )
        self.run_by_idempotency = _t(
            "SELECT id FROM engine_runs WHERE job_id = :job_id AND idempotency_key = :key"
        )
        # A delayed QUEUED run (`trigger --delay/--at`) has a `wake_at` too; its `rank_at` is
        # its due time, so it sorts after the runs due now and the claim scan stops before it.
        ready = "(" + " OR ".join(f"({c})" for c in _READY_BY_STATUS) + f") AND {_KEYED}"
        # A RUNNING run in the ready set has lost its execution (lease lapsed, worker gone):
        # claiming it records the lost execution and counts a recovery. One recovered
        # `max_recoveries` times already is claimed *to be failed*: a fresh lease and epoch but
        # no owner, which the caller ends in its own transaction, parent
        # first (Store._fail_exhausted); if that never commits, the lease lapses and the next
        # claim finds the run exhausted again (an ownerless lease is no lost execution).
        exhausted = "(status = 'RUNNING' AND recoveries >= :max_recoveries)"
        lost = (
            "CASE WHEN status = 'RUNNING' AND lease_owner IS NOT NULL THEN "
            + append_json(
                "lost_executions",
                postgres,
                attempt="attempt",
                epoch="lease_epoch",
                worker="lease_owner",
                lost_at=iso_text("lease_expires_at", postgres),
            )
            + " ELSE lost_executions END"
        )
        claim_set = (
            "status = 'RUNNING', "
            f"lease_owner = CASE WHEN {exhausted} THEN NULL ELSE :worker END, "
            f"lease_epoch = lease_epoch + 1, "
            f"lease_expires_at = {stamp(':expires')}, "
            "wake_at = NULL, "
            f"attempt = attempt + CASE WHEN status = 'WAITING' OR {exhausted} THEN 0 "
            "ELSE 1 END, "
            f"started_at = COALESCE(started_at, {later(stamp(':now'), 'created_at')}), "
            f"recoveries = recoveries + CASE WHEN status = 'RUNNING' AND NOT {exhausted} "
            "THEN 1 ELSE 0 END, "
            f"lost_executions = {lost} "
        )
        claimed = (
            # The bare owner: SQLite 3.40's RETURNING reads it before the update inside a CASE.
            "RETURNING id, job_id, job_version, payload, lease_epoch, attempt, lease_owner, "
            "recoveries, lost_executions, parent_run_id, parent_task_id, idempotency_key"
        )
        # Runs without a concurrency limit: one statement, highest rank first.
        self.claim_runs = (
            _t(
                f"UPDATE engine_runs SET {claim_set}"
                f"WHERE id IN ({_ready_in_rank_order(ready, skip)}) {claimed}",
                now=UTCDateTime,
                expires=UTCDateTime,
            )
            .bindparams(bindparam("job_keys", expanding=True))
            .columns(payload=Json, lost_executions=Json)
        )
        # With limits (engine.store.claim_limited): the ready runs in rank order, each with the
        # number of live RUNNING runs sharing its job and key, skipping keys already at their
        # limit so that a long queue for one key does not hide the others. A lost RUNNING run
        # (lease lapsed) holds no slot: it is reclaimed like any ready run.
        busy = (
            "(SELECT COUNT(*) FROM engine_runs AS busy WHERE busy.job_id = r.job_id "
            "AND busy.concurrency_key = r.concurrency_key AND busy.status = 'RUNNING' "
            "AND busy.lease_expires_at >= :now)"
        )
        self.claim_candidates = _t(
            f"SELECT r.id, r.job_id, r.concurrency_key, r.concurrency_limit, "
            f"CASE WHEN r.concurrency_key IS NULL THEN 0 ELSE {busy} END AS running "
            f"FROM engine_runs AS r WHERE {ready} "
            f"AND (r.concurrency_key IS NULL OR {busy} < r.concurrency_limit) "
            f"ORDER BY r.rank_at LIMIT :scan{skip}",
            now=UTCDateTime,
        ).bindparams(bindparam("job_keys", expanding=True))
        # SQLite reads this outside any transaction before it claims (engine.store_sqlite): an
        # idle worker's claim takes no write lock. One index seek per status, as the claim's.
        any_ready = "SELECT " + " OR ".join(
            f"EXISTS (SELECT 1 FROM engine_runs WHERE {cond} "
            "AND job_id || '@' || job_version IN (SELECT value FROM json_each(:job_keys)))"
            for cond in _READY_BY_STATUS
        )
        self.raw_any_ready = None if postgres else _driver_sql(any_ready, postgres)
        self.claim_ids = (
            _t(
                f"UPDATE engine_runs SET {claim_set}WHERE id IN :ids {claimed}",
                now=UTCDateTime,
                expires=UTCDateTime,
            )
            .bindparams(bindparam("ids", expanding=True))
            .columns(payload=Json, lost_executions=Json)
        )
        # PostgreSQL: limited claims of one job take turns (an advisory lock per job id until
        # the transaction ends), so that each counts the RUNNING runs the others committed.
        self.lock_job_claims = (
            _t("SELECT pg_advisory_xact_lock(hashtext('engine-concurrency:' || :job_id))")
            if postgres
            else None
        )
        # Replay loads a whole run at once: through the driver, like the hot-path writes.
        self.raw_load_tasks = _driver_sql(
            "SELECT parent_path, key, kind, name, status, attempts, output, output_type, error, "
            "due_at, seq, retry_base, rate_limit_wait FROM engine_tasks WHERE run_id = :run_id",
            postgres,
        )
        self.raw_load_log_keys = _driver_sql(
            "SELECT parent_path, line FROM engine_logs WHERE run_id = :run_id", postgres
        )
        cols = (
            "run_id, parent_path, key, kind, name, status, attempts, params, output, "
            "output_type, error, due_at, poller, poll_state, next_poll_at, seq, started_at, "
            "completed_at, attempt_started_at, worker, rate_limit_wait"
        )
        # `started_at` keeps the first attempt's start; `attempt_started_at`, the latest's.
        values = ", ".join(
            ":started_at" if c.strip() == "attempt_started_at" else ":" + c.strip()
            for c in cols.split(",")
        )
        updates = ", ".join(
            f"{c} = excluded.{c}"
            for c in (
                "kind",
                "name",
                "status",
                "attempts",
                "params",
                "output",
                "output_type",
                "error",
                "due_at",
                "poller",
                "poll_state",
                "next_poll_at",
                "completed_at",
                "worker",
                "rate_limit_wait",
            )
        )
        # The hot path (engine.writes) runs these two through the driver itself: named
        # `:params` for sqlite3, numbered and cast `$n::type` for asyncpg.
        self.raw_write_task = _driver_sql(
            f"INSERT INTO engine_tasks ({cols}) SELECT {values} WHERE {fence} "
            f"ON CONFLICT (run_id, parent_path, key) DO UPDATE SET {updates}, "
            "started_at = COALESCE(engine_tasks.started_at, excluded.started_at), "
            "attempt_started_at = COALESCE(excluded.attempt_started_at, "
            "engine_tasks.attempt_started_at)",
            postgres,
        )
        # The attempt history (engine_task_attempts): a task's row holds its latest attempt;
        # these keep an attempt there once another supersedes it. Idempotent: an attempt
        # already kept stays as it was first kept.
        keep = (
            "INSERT INTO engine_task_attempts (task_id, attempt, status, worker, error, "
            "started_at, ended_at) SELECT id, attempts, {status}, worker, {error}, "
            "attempt_started_at, {ended} FROM engine_tasks WHERE {where} "
            "ON CONFLICT (task_id, attempt) DO NOTHING"
        )
        this_task = "run_id = :run_id AND parent_path = :parent_path AND key = :key"
        # Typed NULLs: PostgreSQL would take a bare NULL in a SELECT list for text.
        no_json, no_time = "CAST(NULL AS jsonb)", "CAST(NULL AS timestamptz)"
        # In the transaction of the write that records a failed attempt with a retry to follow.
        self.raw_keep_failed_attempt = _driver_sql(
            keep.format(status="'ERRORED'", error="error", ended=":ended_at", where=this_task),
            postgres,
        )
        # The attempt a lost execution left RUNNING (its worker died, or its lease lapsed):
        # kept by the next execution before it runs the step again, or by the claim that
        # fails the run past its recovery bound.
        self.keep_lost_attempt = _t(
            keep.format(
                status="'LOST'",
                error=no_json,
                ended=no_time,
                where=f"{this_task} AND status = 'RUNNING' AND {fence}",
            )
        )
        self.keep_lost_attempts_of_run = _t(
            keep.format(
                status="'LOST'", error=no_json, ended=no_time,
                where="run_id = :run_id AND status = 'RUNNING'",
            )
        )  # fmt: skip
        # `engine runs retry`: the attempts that ended the failed run, before they are reopened.
        self.keep_ended_attempts = _t(
            keep.format(
                status="status", error="error", ended="completed_at",
                where="run_id = :run_id AND status IN ('ERRORED', 'CANCELED') AND attempts > 0",
            )
        )  # fmt: skip
        log_insert = (
            "INSERT INTO engine_logs (run_id, parent_path, line, level, message, fields, "
            "created_at) VALUES (:run_id, :parent_path, :line, :level, :message, :fields, "
            ":created_at) ON CONFLICT (run_id, parent_path, line) DO NOTHING"
        )
        self.raw_write_log = _driver_sql(log_insert, postgres)
        self.write_log = _t(log_insert, fields=Json, created_at=UTCDateTime)
        # A poll that finished while the run was still running left `wake_at` set: keep the
        # earlier of the two, so that wake-up is not lost.
        self.suspend_at = _t(
            "UPDATE engine_runs SET status = 'WAITING', lease_owner = NULL, "
            "lease_expires_at = NULL, wake_at = CASE WHEN wake_at IS NOT NULL AND "
            "wake_at < :wake_at THEN wake_at ELSE :wake_at END "
            "WHERE id = :id AND lease_epoch = :epoch RETURNING concurrency_key",
            wake_at=UTCDateTime,
        )
        self.suspend = _t(
            "UPDATE engine_runs SET status = 'WAITING', lease_owner = NULL, "
            "lease_expires_at = NULL WHERE id = :id AND lease_epoch = :epoch "
            "RETURNING concurrency_key"
        )
        self.finish_run = _t(
            "UPDATE engine_runs SET status = :status, output = :output, "
            "output_type = :output_type, error = :error, "
            f"completed_at = {ended}, "
            "lease_owner = NULL, lease_expires_at = NULL, wake_at = NULL "
            "WHERE id = :id AND lease_epoch = :epoch "
            "RETURNING concurrency_key, job_id, parent_task_id, parent_run_id",
            output=Json,
            error=Json,
            **now,
        )
        self.cancel_open_tasks = _t(
            "UPDATE engine_tasks SET status = 'CANCELED', completed_at = :now, "
            "next_poll_at = NULL WHERE run_id = :run_id AND status IN ('RUNNING', 'WAITING')",
            **now,
        )
        # Only the runs this worker is executing right now: a run whose execution died must
        # let its lease lapse so that it is picked up again.
        self.heartbeat = _t(
            "UPDATE engine_runs SET lease_expires_at = :expires "
            "WHERE lease_owner = :worker AND status = 'RUNNING' AND id IN :ids "
            "RETURNING id, lease_epoch",
            expires=UTCDateTime,
        ).bindparams(bindparam("ids", expanding=True))
        mine = "AND job_id || '@' || job_version IN :job_keys"
        # The earliest deadline of an unfinished run, one index seek per status
        # (ix_engine_runs_status_deadline).
        deadlines = (
            "(SELECT MIN(d) FROM ("
            + " UNION ALL ".join(
                f"SELECT MIN(deadline_at) AS d FROM engine_runs WHERE status = '{status}' "
                "AND deadline_at IS NOT NULL"
                for status in ("QUEUED", "RUNNING", "WAITING")
            )
            + ") AS deadlines)"
        )
        # `after`: wake-ups the last claim already saw and left (their concurrency slot is
        # taken) are not due work; the run ending that frees the slot wakes the worker.
        self.next_due = (
            _t(
                "SELECT (SELECT MIN(wake_at) FROM engine_runs WHERE status = 'WAITING' "
                f"AND wake_at > :after {mine}), "
                "(SELECT MIN(wake_at) FROM engine_runs WHERE status = 'QUEUED' "
                f"AND wake_at > :after {mine}), "
                "(SELECT MIN(lease_expires_at) FROM engine_runs WHERE status = 'RUNNING' "
                f"{mine}), (SELECT MIN(next_poll_at) FROM engine_tasks WHERE status = 'WAITING' "
                "AND poller IN :pollers), "
                f"(SELECT MIN(next_fire_at) FROM engine_schedules WHERE NOT paused {mine}), "
                # Any worker cancels any run past its deadline: no job code is needed for it.
                f"{deadlines}",
                after=UTCDateTime,
            )
            .bindparams(bindparam("job_keys", expanding=True), bindparam("pollers", expanding=True))
            .columns(*(_col(n) for n in ("a", "b", "c", "d", "e", "f")))
        )
        self.claim_polls = (
            _t(
                "UPDATE engine_tasks SET next_poll_at = :hold WHERE id IN ("
                "SELECT id FROM engine_tasks WHERE status = 'WAITING' AND poller IN :pollers "
                f"AND next_poll_at <= :now ORDER BY next_poll_at LIMIT :limit{skip}) "
                "RETURNING id, run_id, poller, params, poll_state, started_at",
                now=UTCDateTime,
                hold=UTCDateTime,
            )
            .bindparams(bindparam("pollers", expanding=True))
            .columns(params=Json, poll_state=Json, started_at=UTCDateTime)
        )
        # SQLite reads this first, outside any transaction, like any_ready (ix_engine_tasks_polls).
        any_poll_due = (
            "SELECT EXISTS (SELECT 1 FROM engine_tasks WHERE status = 'WAITING' "
            "AND next_poll_at <= :now AND poller IN (SELECT value FROM json_each(:pollers)))"
        )
        self.raw_any_poll_due = None if postgres else _driver_sql(any_poll_due, postgres)
        self.raw_reschedule_poll = _driver_sql(
            "UPDATE engine_tasks SET next_poll_at = :next_poll_at, poll_state = :poll_state "
            "WHERE id = :id AND status = 'WAITING'",
            postgres,
        )
        self.finish_poll = _t(
            "UPDATE engine_tasks SET status = :status, output = :output, "
            "output_type = :output_type, error = :error, "
            "poll_state = :poll_state, completed_at = :now, next_poll_at = NULL "
            "WHERE id = :id AND status = 'WAITING'",
            output=Json,
            error=Json,
            poll_state=Json,
            **now,
        )
        # A run's wake-up, no later than `at` (an earlier one already set is kept: it is due
        # first). Now for most settles; a little later for a parent gathering children.
        self.wake_run = _t(
            "UPDATE engine_runs SET wake_at = CASE WHEN wake_at IS NOT NULL AND wake_at < :at "
            "THEN wake_at ELSE :at END WHERE id = :id AND status IN ('WAITING', 'RUNNING')",
            at=UTCDateTime,
        )
        self.get_run = _t(
            f"SELECT {_RUN_COLUMNS}, recoveries, lost_executions FROM engine_runs WHERE id = :id"
        ).columns(lost_executions=Json, **_RUN_TYPES)
        self.list_runs = _t(
            f"SELECT {_RUN_COLUMNS} FROM engine_runs "
            "WHERE (:job_id IS NULL OR job_id = :job_id) "
            "AND (:status IS NULL OR status = :status) "
            "AND (:version IS NULL OR job_version = :version) "
            "AND (:parent IS NULL OR parent_run_id = :parent) "
            "ORDER BY created_at DESC LIMIT :limit",
            job_id=_str(),
            status=_str(),
            version=_str(),
            parent=_str(),
        ).columns(**_RUN_TYPES)
        self.get_tasks = _t(
            "SELECT id, parent_path, key, kind, name, status, attempts, params, output, "
            "output_type, error, due_at, poller, next_poll_at, seq, started_at, completed_at, "
            "attempt_started_at, worker "
            "FROM engine_tasks WHERE run_id = :run_id ORDER BY seq, id"
        ).columns(
            params=Json,
            output=Json,
            error=Json,
            due_at=UTCDateTime,
            next_poll_at=UTCDateTime,
            started_at=UTCDateTime,
            completed_at=UTCDateTime,
            attempt_started_at=UTCDateTime,
        )
        self.get_attempts = _t(
            "SELECT a.task_id, a.attempt, a.status, a.worker, a.error, a.started_at, a.ended_at "
            "FROM engine_task_attempts a JOIN engine_tasks t ON t.id = a.task_id "
            "WHERE t.run_id = :run_id ORDER BY a.task_id, a.attempt"
        ).columns(error=Json, started_at=UTCDateTime, ended_at=UTCDateTime)
        # Why runs wait (engine.waiting): their open waits, and the live RUNNING count of
        # each concurrency group.
        self.waiting_tasks = (
            _t(
                "SELECT run_id, key, kind, name, params, status, attempts, error, due_at, "
                "poller, next_poll_at, rate_limit_wait FROM engine_tasks "
                "WHERE status = 'WAITING' AND run_id IN :ids"
            )
            .bindparams(bindparam("ids", expanding=True))
            .columns(
                params=Json,
                error=Json,
                due_at=UTCDateTime,
                next_poll_at=UTCDateTime,
                rate_limit_wait=Json,
            )
        )
        self.running_counts = _t(
            "SELECT job_id, concurrency_key, COUNT(*) AS running FROM engine_runs "
            "WHERE status = 'RUNNING' AND concurrency_key IS NOT NULL "
            "AND lease_expires_at >= :now GROUP BY job_id, concurrency_key",
            now=UTCDateTime,
        )
        self.get_logs = _t(
            "SELECT parent_path, line, level, message, fields, created_at FROM engine_logs "
            "WHERE run_id = :run_id ORDER BY created_at, line"
        ).columns(fields=Json, created_at=UTCDateTime)
        self.run_status_locked = _t(f"SELECT status FROM engine_runs WHERE id = :id{lock}")
        # Every cancel (`engine runs cancel`, a deadline) is this one statement: the status
        # guard is in it, so a run that finished meanwhile is left as it is (INVARIANTS 12);
        # `error` is what a deadline records (RunTimeoutError), NULL for a plain cancel.
        self.cancel_run = _t(
            f"UPDATE engine_runs SET status = 'CANCELED', error = :error, completed_at = {ended}, "
            "wake_at = NULL, lease_owner = NULL, lease_expires_at = NULL, "
            "lease_epoch = lease_epoch + 1 "
            "WHERE id = :id AND status IN ('QUEUED', 'WAITING', 'RUNNING') "
            "RETURNING concurrency_key, job_id, parent_task_id, parent_run_id",
            error=Json,
            **now,
        )
        # Deadlines (docs/triggers.md): the unfinished runs past theirs, oldest first, each then
        # canceled in a transaction of its own, like `engine runs cancel`, with the
        # RunTimeoutError recorded. Read without a lock: taking them all here would lock a
        # child before its parent (see Store._cancel).
        # The sweep reads this first (ix_engine_runs_status_deadline) and opens a write
        # transaction only when it is true: an idle worker sweeps every second.
        any_expired = (
            "SELECT EXISTS (SELECT 1 FROM engine_runs WHERE status IN "
            "('QUEUED', 'RUNNING', 'WAITING') AND deadline_at <= :now)"
        )
        self.any_expired = _t(any_expired, **now)
        self.raw_any_expired = _driver_sql(any_expired, postgres)
        self.expired_runs = _t(
            "SELECT id, deadline_at FROM engine_runs WHERE status IN "
            "('QUEUED', 'RUNNING', 'WAITING') AND deadline_at <= :now "
            "ORDER BY deadline_at, id LIMIT :limit",
            **now,
        ).columns(deadline_at=UTCDateTime)
        # Schedules (engine.schedules).
        self.register_schedule = _t(
            "INSERT INTO engine_schedules (job_id, expression, timezone, job_version, missed, "
            "paused, next_fire_at, registered_at) VALUES (:job_id, :expression, :timezone, "
            ":job_version, :missed, false, :next_fire_at, :registered_at) "
            "ON CONFLICT (job_id, expression, timezone) DO UPDATE SET "
            "job_version = excluded.job_version, missed = excluded.missed, "
            "registered_at = excluded.registered_at",
            next_fire_at=UTCDateTime,
            registered_at=UTCDateTime,
        )
        # A job's schedules are the ones its latest registering worker declares.
        self.prune_schedules = _t(
            "DELETE FROM engine_schedules WHERE job_id = :job_id "
            "AND NOT (expression || '|' || timezone IN :keep)"
        ).bindparams(bindparam("keep", expanding=True, type_=String()))
        self.due_schedules = (
            _t(
                "SELECT job_id, expression, timezone, job_version, missed, next_fire_at "
                "FROM engine_schedules WHERE NOT paused AND next_fire_at <= :now "
                f"{mine} ORDER BY next_fire_at LIMIT :limit{skip}",
                **now,
            )
            .bindparams(bindparam("job_keys", expanding=True))
            .columns(next_fire_at=UTCDateTime)
        )
        # Guarded on the fire time read: a tick is moved on (and its run inserted) once.
        self.advance_schedule = _t(
            "UPDATE engine_schedules SET next_fire_at = :next, "
            "last_tick_at = COALESCE(:tick, last_tick_at), "
            "last_run_id = COALESCE(:run_id, last_run_id) "
            "WHERE job_id = :job_id AND expression = :expression AND timezone = :timezone "
            "AND next_fire_at = :due",
            next=UTCDateTime,
            due=UTCDateTime,
            tick=UTCDateTime,
            run_id=_str(),
        )
        self.list_schedules = _t(
            "SELECT job_id, expression, timezone, job_version, missed, paused, next_fire_at, "
            "last_tick_at, last_run_id, registered_at FROM engine_schedules "
            "WHERE (:job_id IS NULL OR job_id = :job_id) ORDER BY job_id, expression, timezone",
            job_id=_str(),
        ).columns(next_fire_at=UTCDateTime, last_tick_at=UTCDateTime, registered_at=UTCDateTime)
        self.set_schedule_paused = _t(
            "UPDATE engine_schedules SET paused = :paused, next_fire_at = :next "
            "WHERE job_id = :job_id AND expression = :expression AND timezone = :timezone",
            next=UTCDateTime,
        )
        self.canceled_among = _t(
            "SELECT id FROM engine_runs WHERE status = 'CANCELED' AND id IN :ids"
        ).bindparams(bindparam("ids", expanding=True))
        self.retry_run = _t(
            # A retry gives the run a fresh recovery budget; `lost_executions` stays as history.
            # A deadline that has passed is lifted: the retried run would be canceled at once.
            "UPDATE engine_runs SET status = 'QUEUED', error = NULL, completed_at = NULL, "
            "wake_at = NULL, recoveries = 0, deadline_at = CASE WHEN deadline_at <= :now "
            "THEN NULL ELSE deadline_at END WHERE id = :id AND status = 'FAILED'",
            **now,
        )
        self.reopen_failed_tasks = _t(
            # A reopened poll starts afresh, as its next attempt: its timeout counts from now
            # (`started_at`). A task keeps counting its attempts; its retry policy counts from
            # here (`retry_base`). A sleep that was cut off by the failure keeps its due time.
            "UPDATE engine_tasks SET status = 'WAITING', "
            "attempts = CASE WHEN poller IS NULL THEN attempts ELSE attempts + 1 END, "
            "retry_base = attempts, worker = NULL, "
            # A wait for an event or a signal keeps its timeout, and waits again.
            "due_at = CASE WHEN kind IN ('wait', 'event', 'signal') THEN due_at ELSE :now END, "
            "completed_at = NULL, next_poll_at = CASE WHEN poller IS NULL THEN NULL ELSE :now "
            "END, started_at = CASE WHEN poller IS NULL THEN started_at ELSE :now END, "
            "attempt_started_at = CASE WHEN poller IS NULL THEN NULL ELSE :now END "
            "WHERE run_id = :run_id AND status IN ('ERRORED', 'CANCELED')",
            **now,
        )


# PostgreSQL types of the hot path's parameters (asyncpg needs them spelled out).
_PG_TYPES = {
    "id": "integer",
    "attempts": "integer",
    "seq": "integer",
    "epoch": "integer",
    "params": "jsonb",
    "output": "jsonb",
    "error": "jsonb",
    "poll_state": "jsonb",
    "rate_limit_wait": "jsonb",
    "fields": "jsonb",
    "due_at": "timestamptz",
    "next_poll_at": "timestamptz",
    "started_at": "timestamptz",
    "completed_at": "timestamptz",
    "created_at": "timestamptz",
    "ended_at": "timestamptz",
    # engine_task_usage (engine.sql_usage)
    "prompt_tokens": "integer",
    "completion_tokens": "integer",
    "cached_tokens": "integer",
    "reasoning_tokens": "integer",
    "total_tokens": "integer",
    "rate_limits": "jsonb",
    "images": "integer",
    "recorded_at": "timestamptz",
}


# The runs a claim may take, one condition per status (a RUNNING one has lost its execution),
# among the worker's jobs.
_READY_BY_STATUS = (
    "status = 'QUEUED' AND (wake_at IS NULL OR wake_at <= :now)",
    "status = 'WAITING' AND wake_at <= :now",
    "status = 'RUNNING' AND lease_expires_at < :now",
)
_KEYED = "job_id || '@' || job_version IN :job_keys"


def _ready_in_rank_order(ready: str, skip: str) -> str:
    """The ids of the first `:limit` ready runs in rank order.

    SQLite answers an OR over the three statuses with several indexes and then sorts all they
    match, i.e. the whole queue, on every claim. Each status apart, in rank order through
    ix_engine_runs_status_rank, stops after `:limit` runs. PostgreSQL keeps the one SELECT:
    its row locks (SKIP LOCKED) must be taken on the runs claimed, not on every branch's.
    """
    if skip:
        return f"SELECT id FROM engine_runs WHERE {ready} ORDER BY rank_at LIMIT :limit{skip}"
    branches = " UNION ALL ".join(
        f"SELECT * FROM (SELECT id, rank_at FROM engine_runs WHERE {cond} AND {_KEYED} "
        "ORDER BY rank_at LIMIT :limit)"
        for cond in _READY_BY_STATUS
    )
    return f"SELECT id FROM ({branches}) ORDER BY rank_at LIMIT :limit"


@dataclass(frozen=True)
class DriverSQL:
    """A statement for the driver itself: its text and the parameter names in order."""

    text: str
    names: tuple[str, ...]


def driver_sql(sql: str, postgres: bool, types: dict[str, str] | None = None) -> DriverSQL:
    """`sql` with `:name` parameters as the driver takes it (PostgreSQL: `$n::type`, the type
    from `types`, else the engine's columns' own)."""
    return _driver_sql(sql, postgres, types)


def _driver_sql(sql: str, postgres: bool, types: dict[str, str] | None = None) -> DriverSQL:
    names: list[str] = []
    if not postgres:
        return DriverSQL(sql, tuple(dict.fromkeys(re.findall(r"(?<!:):(\w+)", sql))))

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        pg_type = (types or {}).get(name) or _PG_TYPES.get(name, "text")
        return f"${names.index(name) + 1}::{pg_type}"

    return DriverSQL(re.sub(r"(?<!:):(\w+)", number, sql), tuple(names))


def append_json(array: str, postgres: bool, **fields: str) -> str:
    """SQL for `array` (a JSON array column, or NULL) with one object of `fields` appended."""
    pairs = ", ".join(f"'{name}', {sql}" for name, sql in fields.items())
    if postgres:
        return f"COALESCE({array}, '[]'::jsonb) || jsonb_build_array(jsonb_build_object({pairs}))"
    return f"json_insert(COALESCE({array}, '[]'), '$[#]', json_object({pairs}))"


def iso_text(column: str, postgres: bool) -> str:
    """SQL for a timestamp column as the ISO 8601 text `engine runs show` prints (UTC, µs)."""
    if postgres:
        return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US') || '+00:00'"
    # SQLite keeps UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return f"replace({column}, ' ', 'T') || '+00:00'"


def _col(name: str) -> Any:
    return column(name, UTCDateTime)


def _str() -> Any:
    return String()
