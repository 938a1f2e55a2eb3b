"""The task log: every table the engine keeps, as SQLAlchemy Core (also Alembic's metadata).

The model in ten lines:
- A *run* is one triggered execution of a job (`engine_runs`): payload in, output or error out.
- A run is executed by replaying the job function from the top; every `io` call is a *task*
  (`engine_tasks`), identified by (run, parent path, key). The unique constraint on that identity
  is what makes a recorded step impossible to record twice.
- A task's *attempts* count its executions, across retries, crashes and `runs retry`; a failed
  attempt with retries left becomes a *wait*. The task row holds its latest attempt; the earlier
  ones (failed, lost with their worker, or ended before a `runs retry`) are kept in
  `engine_task_attempts`.
- A *wait* is a task in status WAITING with a `due_at` (a sleep, a retry delay) or a `poller`
  (a background poll the scheduler performs). A waiting run holds no worker memory: its row's
  `wake_at` says when the scheduler should claim it again.
- A worker executes a run only while it holds the run's *lease*: `lease_epoch` grows with every
  claim, and every write an execution makes is fenced on the epoch it claimed with.
- A *child run* (`io.invoke`) is a run whose `parent_run_id` names the run that started it; the
  parent waits on a task of kind "invoke" that the child's end settles.
- Log lines (`engine_logs`) and registered job versions (`engine_jobs`) complete the picture.
- A *schedule* (`engine_schedules`) fires runs on cron ticks; a run may be delayed (`wake_at`
  while QUEUED) and may have a deadline (`deadline_at`) past which it is canceled.
- A task that called a paid API (an OpenAI call) has one `engine_task_usage` row: model, tokens
  and the provider's rate-limit headers, written with its outcome; other tasks have none.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)

# Alembic's version table for the engine's migrations: its own name, so a host application's
# Alembic history in the same database never clashes with it.
VERSION_TABLE = "engine_alembic_version"

metadata = MetaData()

RUN_STATUSES = ("QUEUED", "RUNNING", "WAITING", "COMPLETED", "FAILED", "CANCELED")
FINAL_RUN_STATUSES = ("COMPLETED", "FAILED", "CANCELED")


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC timestamp: `timestamptz` on PostgreSQL, an ISO-8601 text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, int | float):
            value = datetime.fromtimestamp(value, UTC)
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp: datetime = value
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


class _Json(TypeDecorator[Any]):
    """JSON on SQLite, JSONB (indexable, queryable with ->>) on PostgreSQL; SQL NULL (not JSON
    'null') for None, so `WHERE output IS NULL` means what it says.

    JSONB is picked per dialect here rather than by `with_variant(JSONB(...))`, so that only a
    PostgreSQL connection imports SQLAlchemy's PostgreSQL dialect (a SQLite CLI command would
    pay ~7 % of its start-up for it: issue 10)."""

    impl = JSON(none_as_null=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import JSONB

            return dialect.type_descriptor(JSONB(none_as_null=True))
        return dialect.type_descriptor(self.impl_instance)


Json = _Json()

jobs = Table(
    "engine_jobs",
    metadata,
    Column("job_id", String(200), primary_key=True),
    Column("version", String(100), primary_key=True),
    Column("payload_schema", Json, nullable=True),
    Column("registered_at", UTCDateTime, nullable=False),
    # Flow control declared by `@job` (docs/flow-control.md), so that a trigger from a process
    # without the job's code applies it: the default priority, and the concurrency limit
    # ({"limit": n, "key": null | "payload.field" | "<code>"}).
    Column("priority", Integer, nullable=False, default=0, server_default="0"),
    Column("concurrency", Json, nullable=True),
    # `@job(on_event=...)`: the event name whose every event starts a run of this version.
    Column("on_event", String(200), nullable=True),
    # `@job(timeout=)` in seconds: the deadline a trigger from a process without the code sets.
    Column("timeout", Float, nullable=True),
)
Index("ix_engine_jobs_on_event", jobs.c.on_event)

runs = Table(
    "engine_runs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("job_id", String(200), nullable=False),
    Column("job_version", String(100), nullable=False),
    Column("status", String(16), nullable=False),
    Column("payload", Json, nullable=True),
    Column("output", Json, nullable=True),
    Column("output_type", String(300), nullable=True),
    Column("error", Json, nullable=True),
    Column("idempotency_key", String(300), nullable=True),
    # How many executions (claims) this run has had; `ctx.attempt`.
    Column("attempt", Integer, nullable=False, default=0),
    Column("lease_owner", String(200), nullable=True),
    Column("lease_epoch", Integer, nullable=False, default=0),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    # When a WAITING run is due to be claimed again (a wait fell due, a poll finished), or when
    # a delayed QUEUED run may first be claimed (`engine trigger --delay/--at`).
    Column("wake_at", UTCDateTime, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    # Executions that ended without an outcome (lease lapsed, worker gone), and what is known
    # of each ({"attempt", "epoch", "worker", "lost_at"}): past a bound the run is failed.
    Column("recoveries", Integer, nullable=False, default=0, server_default="0"),
    Column("lost_executions", Json, nullable=True),
    # Flow control (docs/flow-control.md). Claims take runs in `rank_at` order: the trigger
    # time advanced by PRIORITY_STEP seconds per priority level, so priority wins within a
    # bounded window and no run starves.
    Column("priority", Integer, nullable=False, default=0, server_default="0"),
    Column("rank_at", UTCDateTime, nullable=True),
    # A run with a concurrency limit: at most `concurrency_limit` runs of its job with the
    # same `concurrency_key` ("" for a job-wide limit) are RUNNING at once. NULL: no limit.
    Column("concurrency_key", String(300), nullable=True),
    Column("concurrency_limit", Integer, nullable=True),
    # A run still QUEUED, RUNNING or WAITING at its deadline is canceled with a RunTimeoutError
    # (`@job(timeout=)`, `engine trigger --timeout`); swept by every scheduler loop.
    Column("deadline_at", UTCDateTime, nullable=True),
    # A child run (started by `io.invoke`): its parent run, and the parent's WAITING task
    # (kind "invoke") that the child's end settles, in the transaction that ends the child.
    Column("parent_run_id", String(40), nullable=True),
    Column("parent_task_id", Integer, nullable=True),
    UniqueConstraint("job_id", "idempotency_key", name="uq_engine_runs_idempotency"),
)
Index("ix_engine_runs_status_deadline", runs.c.status, runs.c.deadline_at)
Index("ix_engine_runs_status_wake", runs.c.status, runs.c.wake_at)
# The claim: each status's ready runs in rank order (0013_claim_index).
Index("ix_engine_runs_status_rank", runs.c.status, runs.c.rank_at)
Index("ix_engine_runs_concurrency", runs.c.job_id, runs.c.concurrency_key, runs.c.status)
Index("ix_engine_runs_created", runs.c.created_at)
# The dashboard's runs page: filters by job or status, and search by idempotency key (0006_ui).
Index("ix_engine_runs_job_created", runs.c.job_id, runs.c.created_at)
Index("ix_engine_runs_status_created", runs.c.status, runs.c.created_at)
Index("ix_engine_runs_idempotency_key", runs.c.idempotency_key)
# A run's children: `runs show` and the cancel cascade (0010_children).
Index("ix_engine_runs_parent", runs.c.parent_run_id)

tasks = Table(
    "engine_tasks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("engine_runs.id", ondelete="CASCADE"), nullable=False),
    # The keys of the enclosing tasks, as a JSON array text: "[]" at the top level.
    Column("parent_path", Text, nullable=False),
    Column("key", String(500), nullable=False),
    # What made the task: "task" (run_task), "wait", "poll", or an integration's method.
    Column("kind", String(40), nullable=False),
    Column("name", String(300), nullable=False),
    # RUNNING, WAITING, COMPLETED, ERRORED or CANCELED.
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("params", Json, nullable=True),
    Column("output", Json, nullable=True),
    Column("output_type", String(300), nullable=True),
    Column("error", Json, nullable=True),
    # A WAITING task is due at `due_at` (sleep, retry delay) or polled by `poller`.
    Column("due_at", UTCDateTime, nullable=True),
    Column("poller", String(200), nullable=True),
    Column("poll_state", Json, nullable=True),
    Column("next_poll_at", UTCDateTime, nullable=True),
    # Order in which the run first reached each task.
    Column("seq", Integer, nullable=False),
    # When the first attempt started, and when the task ended.
    Column("started_at", UTCDateTime, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    # The latest attempt: when it started, and the worker that ran it.
    Column("attempt_started_at", UTCDateTime, nullable=True),
    Column("worker", String(200), nullable=True),
    # Attempts made before the last `engine runs retry`: the retry policy counts from here.
    Column("retry_base", Integer, nullable=False, default=0, server_default="0"),
    # A WAITING task suspended by the shared limiter (engine.ratelimit) until its reserved
    # place: {"rate_limit": name, "at": the place, epoch seconds on the database's clock}.
    Column("rate_limit_wait", Json, nullable=True),
    UniqueConstraint("run_id", "parent_path", "key", name="uq_engine_tasks_identity"),
)
Index("ix_engine_tasks_polls", tasks.c.status, tasks.c.next_poll_at)

# A task's earlier attempts (its row holds the latest), written only when an attempt is
# superseded: failed with a retry to follow, lost with its worker (found RUNNING by the next
# execution), or ended before `engine runs retry`. A first-time success writes nothing here.
task_attempts = Table(
    "engine_task_attempts",
    metadata,
    Column(
        "task_id",
        Integer,
        ForeignKey("engine_tasks.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    Column("attempt", Integer, primary_key=True, autoincrement=False),
    # ERRORED, LOST (its execution ended without an outcome) or CANCELED.
    Column("status", String(16), nullable=False),
    Column("worker", String(200), nullable=True),
    Column("error", Json, nullable=True),
    Column("started_at", UTCDateTime, nullable=True),
    # Null for a lost attempt: when its worker died is not known.
    Column("ended_at", UTCDateTime, nullable=True),
)

logs = Table(
    "engine_logs",
    metadata,
    Column(
        "run_id", String(40), ForeignKey("engine_runs.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("parent_path", Text, primary_key=True),
    # Which line this is, so a replay recognises a line it already wrote: a digest of its level
    # and message, and which occurrence of that message in its parent ("3f9a...:2"). Branches
    # of a gather that log in another order on replay still find their own lines.
    Column("line", String(40), primary_key=True),
    Column("level", String(10), nullable=False),
    Column("message", Text, nullable=False),
    Column("fields", Json, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)

# Live workers: each `engine run` upserts its row at start and on every heartbeat, so
# `engine jobs list` can say which versions are served by whom.
workers = Table(
    "engine_workers",
    metadata,
    Column("worker_id", String(200), primary_key=True),
    Column("host", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    # ["job-id@version", ...] this worker executes.
    Column("jobs", Json, nullable=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    # Live while now < expires_at (last heartbeat + the worker's lease): a worker killed with
    # -9 leaves its row, which simply stops being live.
    Column("expires_at", UTCDateTime, nullable=False),
)

# Tokens a task spent on a paid API (one row per task that reported usage, written in the same
# transaction as its outcome). Cost is not stored: it is computed when reported, from the price
# table (engine.prices), so a corrected price applies to past usage too.
task_usage = Table(
    "engine_task_usage",
    metadata,
    Column("task_id", Integer, ForeignKey("engine_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("run_id", String(40), ForeignKey("engine_runs.id", ondelete="CASCADE"), nullable=False),
    # Who billed it ("openai") and the model the response names ("gpt-4o-mini-2024-07-18").
    Column("provider", String(40), nullable=False),
    Column("model", String(200), nullable=True),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    # Parts of the two above: prompt tokens read from the provider's cache (billed lower), and
    # completion tokens spent on reasoning (billed as output, never shown).
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("total_tokens", Integer, nullable=False, default=0),
    # Images a call made (billed per image, by size and quality: "1024x1024", "hd"); 0 and
    # nulls for every other call.
    Column("images", Integer, nullable=False, default=0, server_default="0"),
    Column("image_size", String(40), nullable=True),
    Column("image_quality", String(40), nullable=True),
    # The response's x-ratelimit-* headers, as sent ({"x-ratelimit-remaining-requests": "59"}).
    Column("rate_limits", Json, nullable=True),
    Column("recorded_at", UTCDateTime, nullable=False),
)
Index("ix_engine_task_usage_run", task_usage.c.run_id)
Index("ix_engine_task_usage_recorded", task_usage.c.recorded_at)

# The shared rate limiters (engine.ratelimit): one row per limit key, holding its GCRA state as
# epoch seconds. `requests_tat`/`tokens_tat` are the "theoretical arrival times": the moment the
# next request (the next token) may be sent. Every worker reserves capacity with one atomic
# upsert on this row, so the row, not any process, is the limiter.
rate_limits = Table(
    "engine_rate_limits",
    metadata,
    Column("name", String(300), primary_key=True),
    Column("requests_tat", Float, nullable=False),
    Column("tokens_tat", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Events (engine.events, docs/triggers.md): each sent event is one row, its id the dedupe key
# (the id given with `--id`, else a fresh one). Its delivery (runs started, waits settled) is
# made in the transaction that inserts it, so an id already here delivers nothing again.
events = Table(
    "engine_events",
    metadata,
    Column("id", String(300), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("payload", Json, nullable=True),
    Column("sent_at", UTCDateTime, nullable=False),
    # How many waiting runs it woke and how many runs it started, when it was sent.
    Column("woke", Integer, nullable=False, default=0, server_default="0"),
    Column("started", Integer, nullable=False, default=0, server_default="0"),
    # One per `Engine.send_event` call: a send retried after its commit's answer was lost
    # recognises its own row by it, and answers with the run ids that commit stored (0014).
    Column("send_token", String(64), nullable=True),
    # {"woke": [run ids], "started": [run ids]}: what the send did, as its sender was told.
    Column("run_ids", Json, nullable=True),
)
Index("ix_engine_events_name_sent", events.c.name, events.c.sent_at)

# The index of open waits for events and signals: one row per `io.wait_for_event` or
# `io.wait_for_signal` task, written with the task. An event finds its waits by
# (name, match_hash): the digest of the event payload projected onto the wait's match keys
# (engine.events.match_hash), never by scanning waits. Rows of settled tasks are deleted when
# an event or a timeout settles them; the lookups join the task and keep only WAITING ones.
event_waits = Table(
    "engine_event_waits",
    metadata,
    Column("task_id", Integer, ForeignKey("engine_tasks.id", ondelete="CASCADE"), primary_key=True),
    Column("run_id", String(40), ForeignKey("engine_runs.id", ondelete="CASCADE"), nullable=False),
    # "event" or "signal".
    Column("kind", String(16), nullable=False),
    Column("name", String(200), nullable=False),
    # Events only: the sorted match keys as JSON text ('["draft_id"]'), the digest of the
    # matched values, and the values themselves (checked again after the lookup).
    Column("match_keys", String(1000), nullable=True),
    Column("match_hash", String(64), nullable=True),
    Column("match_values", Json, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
)
Index(
    "ix_engine_event_waits_match", event_waits.c.kind, event_waits.c.name, event_waits.c.match_hash
)
Index("ix_engine_event_waits_run", event_waits.c.run_id, event_waits.c.kind, event_waits.c.name)

# The distinct match-key sets waits have used per event name: what a sent event projects its
# payload onto. A handful of rows per name; never deleted.
event_keysets = Table(
    "engine_event_keysets",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("match_keys", String(1000), primary_key=True),
)

# Signals (`engine runs signal`): a mailbox per run. A signal is consumed by the first wait for
# its name, the one waiting when it arrives or the next one to wait; `task_id` is that wait.
signals = Table(
    "engine_signals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(40), ForeignKey("engine_runs.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("payload", Json, nullable=True),
    Column("sent_at", UTCDateTime, nullable=False),
    Column("task_id", Integer, ForeignKey("engine_tasks.id", ondelete="SET NULL"), nullable=True),
    Column("consumed_at", UTCDateTime, nullable=True),
    # The dedupe id (`--id`, else a fresh one): a run keeps one signal per id (0014). NULL on
    # rows older than that revision.
    Column("dedupe_id", String(300), nullable=True),
    # One per `Engine.signal` call, as for events: a retried send recognises its own row.
    Column("send_token", String(64), nullable=True),
)
Index("ix_engine_signals_run", signals.c.run_id, signals.c.name, signals.c.id)
Index("uq_engine_signals_dedupe", signals.c.run_id, signals.c.dedupe_id, unique=True)

# Live output of runs (engine.streams): what `io.stream.write(name, data)` published, in order.
# `seq` is the order readers see (1, 2, ... per stream; a reader resumes after the last it saw).
# (task, attempt, n) is who wrote the chunk: the enclosing task's path ("[]" at the job's top
# level), its attempt (0 at the top level) and which of that writer's writes to this stream it
# was. A replay recognises a chunk already recorded by it and does not write it again; a task
# re-run after a crash writes under its new attempt, after the lost attempt's chunks.
stream_chunks = Table(
    "engine_stream_chunks",
    metadata,
    Column(
        "run_id", String(40), ForeignKey("engine_runs.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("stream", String(200), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("task", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("n", Integer, nullable=False),
    Column("data", Json, nullable=False),
    Column("written_at", UTCDateTime, nullable=False),
    UniqueConstraint("run_id", "stream", "task", "attempt", "n", name="uq_engine_stream_writer"),
)

# Cron schedules (engine.schedules): one row per (job, expression, timezone), registered by the
# workers serving the job. Every scheduler loop fires the due ones: moving `next_fire_at` on and
# inserting the tick's run (idempotency key `schedule:<expression>@<tick>`) in one transaction.
schedules = Table(
    "engine_schedules",
    metadata,
    Column("job_id", String(200), primary_key=True),
    Column("expression", String(100), primary_key=True),
    Column("timezone", String(64), primary_key=True),
    # The version the latest registering worker serves: its runs go there.
    Column("job_version", String(100), nullable=False),
    # Ticks missed while no worker ran: "latest" (one run), "all" (one each, up to 100), "skip".
    Column("missed", String(16), nullable=False, server_default="latest"),
    Column("paused", Boolean, nullable=False, server_default=false()),
    Column("next_fire_at", UTCDateTime, nullable=False),
    Column("last_tick_at", UTCDateTime, nullable=True),
    Column("last_run_id", String(40), nullable=True),
    Column("registered_at", UTCDateTime, nullable=False),
)
Index("ix_engine_schedules_due", schedules.c.next_fire_at)
