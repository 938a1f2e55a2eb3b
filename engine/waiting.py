"""Why a QUEUED or WAITING run is not running: `waiting_for` in `engine runs list/show`.

Read from what the database holds, nothing else: the run's waiting tasks (a durable wait, a
background poll, a retry delay, a 429's wait) and, for a run that is ready to run, whether its
concurrency limit is full. See docs/flow-control.md, "What a user sees".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from . import ratelimit
from .views import iso

Group = tuple[str, str]


def waiting_for(
    run: Mapping[str, Any],
    waiting_tasks: Sequence[Mapping[str, Any]],
    running: Mapping[Group, int],
    now: datetime,
) -> dict[str, Any] | None:
    """What `run` waits for, or None when it is neither QUEUED nor WAITING.

    `waiting_tasks` are the run's tasks in status WAITING; `running` the live RUNNING count per
    (job id, concurrency key).
    """
    status = run["status"]
    if status not in ("QUEUED", "WAITING"):
        return None
    wake_at = run.get("wake_at")
    if status == "WAITING" and not (wake_at is not None and wake_at <= now):
        if waiting_tasks:
            first = min(waiting_tasks, key=_due)
            found = _task_wait(first)
            if len(waiting_tasks) > 1:
                found["others"] = len(waiting_tasks) - 1
                found["summary"] += f" (+{len(waiting_tasks) - 1} more)"
            return found
        if wake_at is not None:
            return {"reason": "wake", "until": iso(wake_at), "summary": f"wake at {_t(wake_at)}"}
    if status == "QUEUED" and wake_at is not None and wake_at > now:
        # A delayed run (`engine trigger --delay/--at`).
        return {"reason": "delay", "until": iso(wake_at), "summary": f"delayed until {_t(wake_at)}"}
    # Ready to run: a slot under its concurrency limit, or a worker.
    key, limit = run.get("concurrency_key"), run.get("concurrency_limit")
    if key is not None and limit is not None:
        busy = running.get((run["job_id"], key), 0)
        if busy >= limit:
            where = f"{run['job_id']}" + (f" key {key!r}" if key else "")
            return {
                "reason": "concurrency",
                "job_id": run["job_id"],
                "key": key,
                "running": busy,
                "limit": limit,
                "summary": f"concurrency slot ({where}: {busy}/{limit} running)",
            }
    return {"reason": "worker", "summary": "a worker (ready to run)"}


def _task_wait(task: Mapping[str, Any]) -> dict[str, Any]:
    key = task["key"]
    error = task.get("error") or None
    if task.get("kind") == "invoke":
        # io.invoke: the child run ends the wait (docs/triggers.md, "Child runs").
        child = (task.get("params") or {}).get("run_id")
        return {
            "reason": "child",
            "task": key,
            "run_id": child,
            "job_id": task.get("name"),
            "summary": f"child run {child} ({task.get('name')}, task {key!r})",
        }
    if task.get("poller"):
        when = task.get("next_poll_at")
        return {
            "reason": "poll",
            "task": key,
            "poller": task["poller"],
            "next_poll_at": iso(when),
            "summary": f"poll {key!r} ({task['poller']}), next at {_t(when)}",
        }
    due = task.get("due_at")
    if task.get("kind") in ("event", "signal"):
        # io.wait_for_event / io.wait_for_signal (engine.events): settled by a delivery.
        params = task.get("params") or {}
        kind = task["kind"]
        name = params.get(kind)
        match = params.get("match")
        matching = f" matching {json.dumps(match)}" if match else ""
        return {
            "reason": kind,
            kind: name,
            **({"match": match} if kind == "event" else {}),
            "task": key,
            "until": iso(due),
            "summary": f"{kind} {name!r}{matching} until {_t(due)} (task {key!r})",
        }
    place = task.get("rate_limit_wait") or ratelimit.legacy_wait(error)
    if place:
        # Suspended by the shared limiter (engine.ratelimit) until its reserved place (the
        # row is due a little before it).
        name = place.get("rate_limit")
        if isinstance(place.get("at"), int | float):
            due = datetime.fromtimestamp(place["at"], UTC)
        return {
            "reason": "rate_limit",
            "rate_limit": name,
            "task": key,
            "until": iso(due),
            "summary": f"rate limit {name} until {_t(due)} (task {key!r})",
        }
    if error:
        # A retry wait. A 429 is a rate limit: its wait comes from the provider's headers.
        if error.get("status_code") == 429:
            return {
                "reason": "rate_limit",
                "task": key,
                "until": iso(due),
                "attempt": task.get("attempts"),
                "summary": f"rate limit until {_t(due)} (task {key!r})",
            }
        return {
            "reason": "retry",
            "task": key,
            "until": iso(due),
            "attempt": task.get("attempts"),
            "error": f"{error.get('type')}: {error.get('message')}",
            "summary": f"retry of {key!r} (attempt {task.get('attempts')} failed) at {_t(due)}",
        }
    return {
        "reason": "wait",
        "task": key,
        "until": iso(due),
        "summary": f"wait {key!r} until {_t(due)}",
    }


def _due(task: Mapping[str, Any]) -> datetime:
    when = task.get("next_poll_at") if task.get("poller") else task.get("due_at")
    return when if isinstance(when, datetime) else datetime.max.replace(tzinfo=UTC)


def _t(when: datetime | None) -> str:
    return when.strftime("%Y-%m-%d %H:%M:%S") if when else "?"
