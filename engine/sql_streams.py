"""The SQL of `engine_stream_chunks`: publishing a run's live output, and reading it back.

Kept beside engine.sql (executed only by engine.store and its dialects), like engine.sql_usage:
runs that publish nothing never touch this table. Chunks are written in batches (one per flush
of an execution's buffer, engine.streams), fenced on the run's lease epoch like task writes, and
read by followers through the driver itself (no transaction, so a SQLite reader never takes the
write lock).
"""

from __future__ import annotations

from sqlalchemy.sql.elements import TextClause

from .schema import UTCDateTime
from .sql import DriverSQL, _driver_sql, _t

# PostgreSQL: readers of a run's streams LISTEN on this channel + the run id (engine.streams).
CHANNEL_PREFIX = "engine_stream_"

_COLUMNS = "run_id, stream, seq, task, attempt, n, data, written_at"


class StreamStatements:
    def __init__(self, postgres: bool) -> None:
        # SQLite (a write of the group commit, engine.groupcommit): the first statement is the
        # fence (it changes the run's row only while the epoch is the execution's; SQLite
        # serializes writers, so the inserts that follow in its transaction are fenced too).
        self.raw_fence: DriverSQL = _driver_sql(
            "UPDATE engine_runs SET lease_epoch = lease_epoch "
            "WHERE id = :run_id AND lease_epoch = :epoch",
            postgres,
        )
        # The batch as one JSON array of rows, unpacked by SQLite itself: one statement per
        # batch. A bare number is stored as a BLOB, as engine.codec.sqlite_param binds it (the
        # column's numeric affinity would turn the text 1.0 into the integer 1).
        self.raw_insert_batch: DriverSQL = _driver_sql(
            f"INSERT INTO engine_stream_chunks ({_COLUMNS}) SELECT :run_id, r.value ->> 0, "
            "r.value ->> 1, r.value ->> 2, r.value ->> 3, r.value ->> 4, "
            "CASE WHEN r.value ->> 6 THEN CAST(r.value ->> 5 AS BLOB) ELSE r.value ->> 5 END, "
            "r.value ->> 7 FROM json_each(:rows) AS r WHERE true ON CONFLICT DO NOTHING",
            postgres,
        )
        # PostgreSQL: the whole batch in one statement (one round trip), fenced by sharing the
        # run's row (a concurrent claim, which bumps the epoch, waits for it), and announced to
        # the run's followers when it commits. Returns whether the execution held the lease.
        self.pg_write_batch = (
            "WITH fence AS (SELECT 1 FROM engine_runs WHERE id = $1 AND lease_epoch = $2 "
            "FOR SHARE), written AS ("
            f"INSERT INTO engine_stream_chunks ({_COLUMNS}) "
            "SELECT $1, c.stream, c.seq, c.task, c.attempt, c.n, c.data::jsonb, c.written_at "
            "FROM unnest($3::text[], $4::integer[], $5::text[], $6::integer[], $7::integer[], "
            "$8::text[], $9::timestamptz[]) AS c(stream, seq, task, attempt, n, data, "
            "written_at) WHERE EXISTS (SELECT 1 FROM fence) ON CONFLICT DO NOTHING) "
            f"SELECT EXISTS (SELECT 1 FROM fence) AS held, pg_notify('{CHANNEL_PREFIX}' || $1, '')"
        )
        # What an execution's writer needs before its first write to a stream: the last seq,
        # and how many chunks each writer (task, attempt) has recorded there already.
        self.writers: TextClause = _t(
            "SELECT task, attempt, MAX(n) AS n, MAX(seq) AS seq FROM engine_stream_chunks "
            "WHERE run_id = :run_id AND stream = :stream GROUP BY task, attempt"
        )
        # A follower's read: the chunks after `after`, each flagged `restart` when it is the
        # first chunk of a task's attempt that follows an earlier attempt's chunks (a re-run).
        restart = (
            "CASE WHEN c.n = 1 AND c.attempt > 1 AND EXISTS (SELECT 1 FROM "
            "engine_stream_chunks p WHERE p.run_id = c.run_id AND p.stream = c.stream "
            "AND p.task = c.task AND p.attempt < c.attempt) THEN 1 ELSE 0 END"
        )
        where = (
            ("c.run_id = $1 AND c.stream = $2 AND c.seq > $3::integer")
            if postgres
            else "c.run_id = :run_id AND c.stream = :stream AND c.seq > :after"
        )
        limit = "$4::integer" if postgres else ":limit"
        self.raw_read = (
            f"SELECT c.seq, c.task, c.attempt, c.data, c.written_at, {restart} AS restart "
            f"FROM engine_stream_chunks c WHERE {where} ORDER BY c.seq LIMIT {limit}"
        )
        self.raw_status = (
            "SELECT status FROM engine_runs WHERE id = $1"
            if postgres
            else "SELECT status FROM engine_runs WHERE id = :run_id"
        )
        self.streams_of_run = _t(
            "SELECT stream, COUNT(*) AS chunks, MAX(seq) AS last_seq, MAX(written_at) AS last_at "
            "FROM engine_stream_chunks WHERE run_id = :run_id GROUP BY stream ORDER BY stream"
        ).columns(last_at=UTCDateTime)
