from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from engine import IO, Context, EngineError, PayloadValidationError, job
from engine.jobs import check_against_schema
from engine.views import attempt_lines, run_view, task_tree


def _task(parent: str, key: str, seq: int) -> dict[str, Any]:
    return {
        "parent_path": parent,
        "key": key,
        "seq": seq,
        "name": key,
        "status": "COMPLETED",
        "attempts": 1,
        "params": None,
        "output": None,
        "error": None,
        "started_at": datetime(2026, 1, 1, tzinfo=UTC),
        "completed_at": None,
    }


def test_task_tree_nests_children_in_first_run_order() -> None:
    tree = task_tree(
        [
            _task('["b"]', "b2", 5),
            _task("[]", "b", 2),
            _task("[]", "a", 1),
            _task('["b"]', "b1", 3),
            _task('["b","b1"]', "deep", 4),
        ]
    )
    assert [n["key"] for n in tree] == ["a", "b"]
    assert [n["key"] for n in tree[1]["children"]] == ["b1", "b2"]
    assert tree[1]["children"][0]["children"][0]["key"] == "deep"
    assert tree[0]["started_at"] == "2026-01-01T00:00:00.000000+00:00"


def test_run_view_has_exactly_the_contract_fields() -> None:
    view = run_view(
        {
            "id": "r",
            "job_id": "j",
            "status": "QUEUED",
            "payload": {},
            "output": None,
            "error": None,
            "created_at": datetime(2026, 1, 1, tzinfo=UTC),
            "started_at": None,
            "completed_at": None,
            "lease_epoch": 3,
        }
    )
    assert set(view) == {
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
        # docs/triggers.md
        "delayed_until",
        "deadline_at",
        # docs/triggers.md: the run that started this one with io.invoke (null for others).
        "parent_run_id",
        # docs/flow-control.md: the run's priority (0 unless given).
        "priority",
    }


def test_job_must_be_async() -> None:
    with pytest.raises(EngineError, match="must be an `async def`"):
        job(id="sync-job")(lambda payload, io, ctx: None)  # type: ignore[arg-type, return-value]  # not async: the point


def test_payload_model_validation_message_names_the_field() -> None:
    class P(BaseModel):
        n: int

    @job(id="unit-payload", payload=P)
    async def j(payload: Any, io: IO, ctx: Context) -> None:
        return None

    assert j.check_payload({"n": "3"}) == {"n": 3}
    with pytest.raises(PayloadValidationError, match="n: Input should be a valid integer"):
        j.check_payload({"n": "x"})
    with pytest.raises(PayloadValidationError, match="n: 'x' is not of type 'integer'"):
        check_against_schema("unit-payload", {"n": "x"}, j.payload_schema())


def test_attempt_history_lists_the_kept_attempts_then_the_latest() -> None:
    started = datetime(2026, 1, 1, tzinfo=UTC)
    task = {**_task("[]", "a", 1), "id": 7, "attempts": 3, "worker": "w2",
            "attempt_started_at": started, "completed_at": started}  # fmt: skip
    kept = [
        {"task_id": 7, "attempt": 1, "status": "ERRORED", "worker": "w1", "started_at": started,
         "ended_at": started, "error": {"type": "ConnectionError", "message": "reset"}},
        {"task_id": 7, "attempt": 2, "status": "LOST", "worker": "w1", "started_at": started,
         "ended_at": None, "error": None},
        {"task_id": 8, "attempt": 1, "status": "ERRORED", "worker": "w1", "started_at": None,
         "ended_at": None, "error": None},
    ]  # fmt: skip
    (node,) = task_tree([task], kept)
    assert [(a["attempt"], a["status"], a["worker"]) for a in node["attempt_history"]] == [
        (1, "ERRORED", "w1"),
        (2, "LOST", "w1"),
        (3, "COMPLETED", "w2"),
    ]
    assert attempt_lines(node) == [
        "attempt 1 ERRORED on worker w1: ConnectionError: reset",
        "attempt 2 LOST on worker w1",
        "attempt 3 COMPLETED on worker w2",
    ]
    # One attempt: nothing more to show than the task's own line.
    (single,) = task_tree([_task("[]", "b", 1)])
    assert len(single["attempt_history"]) == 1 and attempt_lines(single) == []
