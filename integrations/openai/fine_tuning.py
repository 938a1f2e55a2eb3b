"""`io.openai.fine_tuning.jobs`: fine-tuning jobs, and a durable wait for one to finish.

A job takes minutes to hours: `create_and_wait_for_completion` records the create under
`key:create` and waits under `key` as a background poll (the run is unloaded meanwhile), until
the job `succeeded`, `failed` or was `cancelled`; it never raises on a failed job: check
`.status` (and `.error`).
"""

from __future__ import annotations

from typing import Any

from openai.pagination import AsyncCursorPage
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

from . import params as P
from .calls import Caller
from .pollers import FINE_TUNE_DONE


class Jobs:
    def __init__(self, caller: Caller) -> None:
        self._c = caller

    async def create(self, key: str, **params: Any) -> FineTuningJob:
        return await self._c.request(key, "fine_tuning.jobs.create", {}, params, post=True)

    async def retrieve(self, key: str, fine_tuning_job_id: str) -> FineTuningJob:
        ids = P.check_ids("fine_tuning.jobs.retrieve", fine_tuning_job_id=fine_tuning_job_id)
        return await self._c.request(key, "fine_tuning.jobs.retrieve", ids, {}, post=False)

    async def list(self, key: str, **params: Any) -> AsyncCursorPage[FineTuningJob]:
        return await self._c.request(key, "fine_tuning.jobs.list", {}, params, post=False)

    async def cancel(self, key: str, fine_tuning_job_id: str) -> FineTuningJob:
        ids = P.check_ids("fine_tuning.jobs.cancel", fine_tuning_job_id=fine_tuning_job_id)
        return await self._c.request(key, "fine_tuning.jobs.cancel", ids, {}, post=True)

    async def list_events(
        self, key: str, fine_tuning_job_id: str, **params: Any
    ) -> AsyncCursorPage[FineTuningJobEvent]:
        ids = P.check_ids("fine_tuning.jobs.list_events", fine_tuning_job_id=fine_tuning_job_id)
        return await self._c.request(key, "fine_tuning.jobs.list_events", ids, params, post=False)

    async def create_and_wait_for_completion(
        self, key: str, *, poll_timeout: float | None = None, **params: Any
    ) -> FineTuningJob:
        """Creates the job under `key:create`, then waits under `key` until it `succeeded`,
        `failed` or was `cancelled` (`poll_interval=`, `max_poll_interval=`, `poll_backoff=`
        set this wait's schedule)."""
        schedule = {
            k: params.pop(k)
            for k in ("poll_interval", "max_poll_interval", "poll_backoff")
            if k in params
        }
        created = await self.create(f"{key}:create", **params)
        return await self._c.wait(
            key,
            "fine_tuning.jobs.create_and_wait_for_completion",
            "fine_tune",
            {"fine_tuning_job_id": created.id},
            FineTuningJob,
            poll_timeout,
            current=created,
            done=FINE_TUNE_DONE,
            **schedule,
        )


class FineTuning:
    def __init__(self, caller: Caller) -> None:
        self.jobs = Jobs(caller)
