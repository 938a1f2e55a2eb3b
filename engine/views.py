"""Runs and their task trees as plain data: the shape `engine runs show --json` prints."""

from __future__ import annotations

import json
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
    return view


def task_tree(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Nests tasks under their parents, each level in the order the run first reached them.

    Sorting by depth first means a parent is always placed before its children.
    """
    by_path: dict[tuple[str, ...], dict[str, Any]] = {}
    roots: list[dict[str, Any]] = []
    for task in sorted(tasks, key=lambda t: (len(json.loads(t["parent_path"])), t["seq"])):
        parent = tuple(json.loads(task["parent_path"]))
        node = {name: task.get(name) for name in TASK_FIELDS}
        node["started_at"] = iso(node["started_at"])
        node["completed_at"] = iso(node["completed_at"])
        node["children"] = []
        by_path[(*parent, task["key"])] = node
        siblings = by_path[parent]["children"] if parent in by_path else roots
        siblings.append(node)
    return roots
