"""A run whose worker is `kill -9`ed in the same step again and again is not executed forever:
past `--max-recoveries` it ends FAILED with a RecoveryLimitError listing the lost executions,
and `engine runs retry` lets a healthy worker finish it (INVARIANT 10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_a_run_killed_in_a_step_again_and_again_fails_then_retry_finishes_it(
    procs: Any, db_url: str, tmp_path: Path
) -> None:
    log, release = tmp_path / "hang.log", tmp_path / "release"
    payload = {"log": str(log), "release": str(release)}
    run_id = procs.start(db_url, "fragile", payload, app="recovery.py")

    killed = []
    for n in (1, 2, 3):
        worker = procs.worker("recovery.py", db_url, lease=1, max_recoveries=2)
        procs.wait_until(lambda n=n: len(procs.lines(log)) == n, 30, f"execution {n}")
        worker.kill9()
        killed.append(worker.id)
    assert procs.lines(log) == ["hang-start 1", "hang-start 2", "hang-start 3"]

    healthy = procs.worker("recovery.py", db_url, lease=1, max_recoveries=2)
    procs.wait_status(db_url, run_id, "FAILED", timeout=30)
    view = procs.view(db_url, run_id)
    error = view["error"]
    assert error["type"] == "RecoveryLimitError", error
    assert [(e["attempt"], e["worker"]) for e in error["executions"]] == list(
        zip((1, 2, 3), killed, strict=True)
    )
    assert "lost 3 executions" in error["message"]
    assert f"`engine runs retry {run_id}` resumes it" in error["message"]
    assert len(procs.lines(log)) == 3, "the run was executed again past the bound"
    shown = procs.ok("runs", "show", run_id, "--database-url", db_url)
    assert "RecoveryLimitError" in shown and "recoveries: 2" in shown, shown

    release.touch()
    assert f"queued {run_id} again" in procs.ok("runs", "retry", run_id, "--database-url", db_url)
    procs.wait_status(db_url, run_id, "COMPLETED", timeout=30)
    assert procs.view(db_url, run_id)["output"] == {"step": "released", "attempt": 4}
    assert procs.lines(log)[3:] == ["hang-start 4"]
    assert "Traceback" not in healthy.output, healthy.output
