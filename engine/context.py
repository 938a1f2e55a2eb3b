"""`Context`: what a job knows about the run it is executing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Context:
    run_id: str
    job_id: str
    job_version: str
    # 1 on a run's first execution; grows when the run is retried or recovered after a crash,
    # not when it resumes from a wait.
    attempt: int
    worker_id: str
    # The tick a schedule started this run for (UTC), as in its payload's "scheduled_at";
    # None for a run no schedule started.
    scheduled_at: datetime | None = None
