"""The bound on recoveries: a run whose executions keep ending without an outcome is failed.

An execution that ends without recording an outcome (its worker was killed, hung, or could not
write) leaves the run RUNNING until its lease lapses; the next claim records it in the run's
`lost_executions` and counts a *recovery*. A run already recovered `max_recoveries` times is not
executed again: the claim ends it FAILED with a `RecoveryLimitError` that lists the lost
executions, and `engine runs retry` gives it a fresh budget.
"""

from __future__ import annotations

from typing import Any

from .exceptions import EngineError, RecoveryLimitError

DEFAULT_MAX_RECOVERIES = 10
MAX_RECOVERIES = 1000


def check_max_recoveries(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RECOVERIES:
        raise EngineError(f"--max-recoveries {value!r}: use 1 to {MAX_RECOVERIES}")
    return value


def recovery_error(run_id: str, executions: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's recorded error: what `engine runs show` prints, with every lost execution."""
    attempts = "; ".join(
        f"attempt {e.get('attempt')} on worker {e.get('worker')} lost at {e.get('lost_at')}"
        for e in executions
    )
    message = (
        f"run {run_id} lost {len(executions)} executions without an outcome "
        f"(lease lapsed, worker gone): {attempts}; `engine runs retry {run_id}` resumes it"
    )
    cls = RecoveryLimitError
    return {
        "type": cls.__qualname__,
        "message": message,
        "module": cls.__module__,
        "executions": executions,
    }
