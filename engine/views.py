"""Runs and their task trees as plain data: the shape `engine runs show --json` prints."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

RUN_FIELDS = (
    "id",
    "job_id",
    "version",
    "status",
    "payload",
    "output",
    "error",
    "created_at",
    "started_at",
    "completed_at",
    # The run that started this one with `io.invoke` (docs/triggers.md, "Child runs"), or null.
    "parent_run_id",
    # -100 to 100: claims take higher first (docs/flow-control.md, "Priority").
    "priority",
)
TASK_FIELDS = (
    "key",
    "name",
    "status",
    "attempts",
    "params",
    "output",
    "error",
    "started_at",
    "completed_at",
)


def iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="microseconds") if value is not None else None


def run_view(run: dict[str, Any]) -> dict[str, Any]:
    view = {name: run.get(name) for name in RUN_FIELDS}
    view["version"] = run.get("job_version")
    for name in ("created_at", "started_at", "completed_at"):
        view[name] = iso(view[name])
    # docs/triggers.md: a delayed run's start time (while it is QUEUED), and the deadline past
    # which an unfinished run is canceled.
    wake_at = run.get("wake_at")
    view["delayed_until"] = iso(wake_at) if run.get("status") == "QUEUED" and wake_at else None
    view["deadline_at"] = iso(run.get("deadline_at"))
    return view


def child_view(child: dict[str, Any]) -> dict[str, Any]:
    """A child run as `runs show` lists it: id, job, version, status, the parent's task that
    started it ("a/b"), and its times."""
    return {
        "id": child["id"],
        "job_id": child["job_id"],
        "version": child["job_version"],
        "status": child["status"],
        "task": child["task"],
        "created_at": iso(child["created_at"]),
        "completed_at": iso(child["completed_at"]),
    }


def task_tree(
    tasks: list[dict[str, Any]], attempts: Iterable[dict[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Nests tasks under their parents, each level in the order the run first reached them;
    each task lists its attempts (`attempts`: the kept earlier ones, engine_task_attempts).

    Sorting by depth first means a parent is always placed before its children.
    """
    kept: dict[Any, list[dict[str, Any]]] = {}
    for attempt in attempts:
        kept.setdefault(attempt["task_id"], []).append(attempt)
    by_path: dict[tuple[str, ...], dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for task in sorted(tasks, key=lambda t: (len(json.loads(t["parent_path"])), t["seq"])):
        parent = tuple(json.loads(task["parent_path"]))
        node = {name: task.get(name) for name in TASK_FIELDS}
        node["started_at"] = iso(node["started_at"])
        node["completed_at"] = iso(node["completed_at"])
        node["attempt_history"] = attempt_history(task, kept.get(task.get("id"), []))
        node["children"] = []
        by_path[(*parent, task["key"])] = node
        siblings = by_path[parent]["children"] if parent in by_path else roots
        siblings.append(node)
    return roots


def attempt_history(task: dict[str, Any], kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every attempt of a task, oldest first: those kept in engine_task_attempts, then the
    latest one (the task row itself) unless it is kept already (a failure awaiting its retry).
    """
    history = [
        {
            "attempt": a["attempt"],
            "started_at": iso(a["started_at"]),
            "ended_at": iso(a["ended_at"]),
            "worker": a["worker"],
            "status": a["status"],
            "error": a["error"],
        }
        for a in kept
    ]
    latest = task.get("attempts") or 0
    if latest > 0 and all(a["attempt"] != latest for a in kept):
        # Rows from before attempts were kept have no attempt start: the first's is the task's.
        started = task.get("attempt_started_at") or (task["started_at"] if latest == 1 else None)
        history.append(
            {
                "attempt": latest,
                "started_at": iso(started),
                "ended_at": iso(task.get("completed_at")),
                "worker": task.get("worker"),
                "status": task["status"],
                "error": task.get("error"),
            }
        )
    return history


def attempt_lines(task: dict[str, Any]) -> list[str]:
    """`engine runs show`'s lines under a task that took more than one attempt, e.g.
    "attempt 1 ERRORED on worker W: ConnectionError: reset"."""
    history = task.get("attempt_history") or []
    if len(history) < 2:
        return []
    lines = []
    for a in history:
        line = f"attempt {a['attempt']} {a['status']}"
        if a["worker"]:
            line += f" on worker {a['worker']}"
        if a["error"]:
            line += f": {a['error'].get('type')}: {a['error'].get('message')}"
        lines.append(line)
    return lines
