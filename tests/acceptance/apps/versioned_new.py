"""Version 1.10 of the job "versioned" (see test_versions.py): it returns the version it ran."""

from __future__ import annotations

from typing import Any

from engine import job


@job(id="versioned", version="1.10")
async def versioned(payload: dict[str, Any], io: Any, ctx: Any) -> dict[str, Any]:
    return {"version": ctx.job_version}
