"""`Context`: what a job knows about the run it is executing."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Context:
    run_id: str
    job_id: str
    job_version: str
    # 1 on a run's first execution; grows when the run is retried or recovered after a crash,
    # not when it resumes from a wait.
    attempt: int
    worker_id: str
