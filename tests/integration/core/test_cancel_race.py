"""Cancel against completion: a cancel acts only on a run still open, in the same statement, and
reports what it really did (INVARIANTS 12)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from support import Harness, unique_id

from engine import IO, Context, InvalidRunStateError, Task, job

RUNS = 800


async def test_cancel_never_overwrites_a_run_that_completed_first(pg_head_url: str) -> None:
    @job(id=unique_id("storm"))
    async def storm(payload: Any, io: IO, ctx: Context) -> Any:
        async def step(task: Task) -> Any:
            await asyncio.sleep(random.random() * 0.004)
            return payload["n"]

        value = await io.run_task("step", step)
        return {"n": value}

    harness = Harness(pg_head_url)
    try:
        await harness.start(storm, concurrency=20)
        await harness.start(storm, concurrency=20)
        engine = harness.engine
        ids = list(await asyncio.gather(*(engine.trigger(storm.id, {"n": i}) for i in range(RUNS))))
        acknowledged: dict[str, str] = {}  # run id -> the status the cancel says it changed
        refused: dict[str, str] = {}  # run id -> the error the cancel gave

        gate = asyncio.Semaphore(40)

        async def cancel_as_it_runs(run_id: str) -> None:
            # Chase the workers: wait until the run is executing, then cancel it at a random
            # moment of its short life, so most cancels race the run's own completion.
            async with gate:
                for _ in range(20000):
                    if (await engine.get_run(run_id))["status"] != "QUEUED":
                        break
                    await asyncio.sleep(0.001)
                await asyncio.sleep(random.random() * 0.006)
                try:
                    acknowledged[run_id] = await engine.cancel(run_id)
                except InvalidRunStateError as exc:
                    refused[run_id] = exc.message

        async def canceler() -> None:
            await asyncio.gather(*(cancel_as_it_runs(run_id) for run_id in ids[::2]))

        await asyncio.wait_for(canceler(), 300)
        finals = {run_id: await engine.wait_for(run_id, 300) for run_id in ids}
    finally:
        await harness.close()

    assert acknowledged and refused, (len(acknowledged), len(refused))
    reopen = Harness(pg_head_url)
    try:
        for run_id, before in acknowledged.items():
            run = finals[run_id]
            assert before in ("QUEUED", "WAITING", "RUNNING"), before
            assert run["status"] == "CANCELED", (run_id, run["status"], before)
            assert run["output"] is None, (run_id, run["output"])
            # Nothing the job did was recorded after the cancel.
            for task in await reopen.store.get_tasks(run_id):
                if task["status"] == "COMPLETED":
                    assert task["completed_at"] <= run["completed_at"], (run_id, task)
        for run_id, message in refused.items():
            run = finals[run_id]
            assert run["status"] == "COMPLETED", (run_id, run["status"], message)
            assert f"run {run_id} is already COMPLETED" in message
        for run_id, run in finals.items():
            if run["status"] == "COMPLETED":
                assert run_id not in acknowledged
                assert run["output"] == {"n": ids.index(run_id)}
            else:
                assert run["status"] == "CANCELED" and run_id in acknowledged, run_id
    finally:
        await reopen.close()


async def test_concurrent_retries_of_one_failed_run_queue_it_once(pg_head_url: str) -> None:
    calls: list[int] = []

    @job(id=unique_id("retryrace"))
    async def flaky(payload: Any, io: IO, ctx: Context) -> None:
        async def step(task: Task) -> None:
            calls.append(1)
            raise RuntimeError("down")

        await io.run_task("step", step)

    harness = Harness(pg_head_url)
    try:
        await harness.start(flaky)
        view = await harness.run(flaky)
        assert view["status"] == "FAILED"
        await harness.stop()  # nothing picks the run up while the retries race
        results = await asyncio.gather(
            *(harness.engine.retry(view["id"]) for _ in range(8)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert len(errors) == 7, results
        assert all(
            isinstance(e, InvalidRunStateError)
            and "is QUEUED: only a FAILED run can be retried" in e.message
            for e in errors
        ), errors
        assert (await harness.engine.get_run(view["id"]))["status"] == "QUEUED"
    finally:
        await harness.close()
