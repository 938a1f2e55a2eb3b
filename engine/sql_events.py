"""The SQL of events and signals: sending, the index of waits, signal mailboxes.

Kept beside engine.sql (same helpers, executed only by engine.store). Recording a wait and
ending one by timeout are not hot-path writes (one per wait): they run in an ordinary
transaction that first takes the run row (PostgreSQL: FOR SHARE, which a sender's FOR UPDATE
waits for), so a sender and the run never settle one wait twice.
"""

from __future__ import annotations

from sqlalchemy import Integer, String, bindparam

from .schema import Json, UTCDateTime
from .sql import _t


class EventStatements:
    def __init__(self, postgres: bool) -> None:
        share = " FOR SHARE" if postgres else ""
        self.insert_event = _t(
            "INSERT INTO engine_events (id, name, payload, sent_at, woke, started, send_token, "
            "run_ids) VALUES (:id, :name, :payload, :sent_at, :woke, :started, :send_token, "
            ":run_ids) ON CONFLICT (id) DO NOTHING",
            payload=Json,
            sent_at=UTCDateTime,
            run_ids=Json,
        )
        # An id that conflicted: sent by an earlier try of this same call (its token), or not.
        self.event_sender = _t(
            "SELECT send_token, run_ids FROM engine_events WHERE id = :id"
        ).columns(run_ids=Json)
        self.list_events = _t(
            "SELECT id, name, payload, sent_at, woke, started FROM engine_events "
            "WHERE (:name IS NULL OR name = :name) ORDER BY sent_at DESC, id LIMIT :limit",
            name=String(),
        ).columns(payload=Json, sent_at=UTCDateTime)
        self.jobs_on_event = _t(
            "SELECT job_id, version, payload_schema, priority, concurrency, timeout "
            "FROM engine_jobs WHERE on_event = :name"
        ).columns(payload_schema=Json, concurrency=Json)
        self.keysets = _t("SELECT match_keys FROM engine_event_keysets WHERE name = :name")
        # The waits an event matches: by (name, digest), through the index; the join keeps the
        # ones still WAITING (a wait's row stays after a cancel, harmless and reused by a retry).
        self.matching_waits = (
            _t(
                "SELECT w.task_id, w.run_id, w.match_hash, w.match_values "
                "FROM engine_event_waits w JOIN engine_tasks t ON t.id = w.task_id "
                "WHERE w.kind = 'event' AND w.name = :name AND w.match_hash IN :hashes "
                "AND t.status = 'WAITING' ORDER BY w.run_id, w.task_id"
            )
            .bindparams(bindparam("hashes", expanding=True))
            .columns(match_values=Json)
        )
        self.delete_waits = _t("DELETE FROM engine_event_waits WHERE task_id IN :ids").bindparams(
            bindparam("ids", expanding=True)
        )
        # -- the run's side ---------------------------------------------------------------------
        self.run_epoch = _t(f"SELECT lease_epoch FROM engine_runs WHERE id = :id{share}")
        self.insert_task = _t(
            "INSERT INTO engine_tasks (run_id, parent_path, key, kind, name, status, attempts, "
            "params, due_at, seq, started_at, attempt_started_at, worker) VALUES (:run_id, "
            ":parent_path, :key, :kind, :name, 'WAITING', 1, :params, :due_at, :seq, "
            ":started_at, :started_at, :worker) "
            "ON CONFLICT (run_id, parent_path, key) DO NOTHING",
            params=Json,
            due_at=UTCDateTime,
            started_at=UTCDateTime,
        )
        self.task = _t(
            "SELECT id, status, output FROM engine_tasks "
            "WHERE run_id = :run_id AND parent_path = :parent_path AND key = :key"
        ).columns(output=Json)
        self.insert_wait = _t(
            "INSERT INTO engine_event_waits (task_id, run_id, kind, name, match_keys, "
            "match_hash, match_values, created_at) VALUES (:task_id, :run_id, :kind, :name, "
            ":match_keys, :match_hash, :match_values, :created_at) "
            "ON CONFLICT (task_id) DO NOTHING",
            match_keys=String(),
            match_hash=String(),
            match_values=Json,
            created_at=UTCDateTime,
        )
        self.insert_keyset = _t(
            "INSERT INTO engine_event_keysets (name, match_keys) VALUES (:name, :match_keys) "
            "ON CONFLICT (name, match_keys) DO NOTHING"
        )
        # A wait's timeout, from the run: only a wait nobody settled first ends with None.
        self.expire = _t(
            "UPDATE engine_tasks SET status = 'COMPLETED', output = NULL, "
            "completed_at = :completed_at WHERE id = :id AND status = 'WAITING'",
            completed_at=UTCDateTime,
        )
        # -- signals ----------------------------------------------------------------------------
        self.signal_wait = _t(
            "SELECT w.task_id FROM engine_event_waits w JOIN engine_tasks t ON t.id = w.task_id "
            "WHERE w.run_id = :run_id AND w.kind = 'signal' AND w.name = :name "
            "AND t.status = 'WAITING' ORDER BY w.task_id LIMIT 1"
        )
        self.insert_signal = _t(
            "INSERT INTO engine_signals (run_id, name, payload, sent_at, task_id, consumed_at, "
            "dedupe_id, send_token) VALUES (:run_id, :name, :payload, :sent_at, :task_id, "
            ":consumed_at, :dedupe_id, :send_token) ON CONFLICT (run_id, dedupe_id) DO NOTHING",
            payload=Json,
            sent_at=UTCDateTime,
            consumed_at=UTCDateTime,
            task_id=Integer(),
        )
        # A signal this run already has under the id: a duplicate, or this call's earlier try.
        self.signal_by_id = _t(
            "SELECT send_token, task_id, sent_at, consumed_at FROM engine_signals "
            "WHERE run_id = :run_id AND dedupe_id = :dedupe_id"
        ).columns(sent_at=UTCDateTime, consumed_at=UTCDateTime)
        self.oldest_signal = _t(
            "SELECT id, payload FROM engine_signals WHERE run_id = :run_id AND name = :name "
            "AND consumed_at IS NULL ORDER BY id LIMIT 1"
        ).columns(payload=Json)
        self.consume_signal = _t(
            "UPDATE engine_signals SET task_id = :task_id, consumed_at = :now WHERE id = :id",
            now=UTCDateTime,
        )
        self.complete_task = _t(
            "UPDATE engine_tasks SET status = 'COMPLETED', output = :output, "
            "completed_at = :now WHERE id = :id",
            output=Json,
            now=UTCDateTime,
        )
