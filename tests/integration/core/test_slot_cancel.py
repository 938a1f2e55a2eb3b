"""A cancel racing a run that waits for a concurrency slot (`@job(concurrency=1)`), and a cancel
of the run holding the slot racing its own end: each run ends one way (the cancel reports what
it really did), and the slot is free again afterwards, every time. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from support import Harness, unique_id, until

from engine import IO, Context, InvalidRunStateError, Task, job

ITERATIONS = 12


async def test_cancels_racing_a_slot_leave_one_outcome_and_a_free_slot(harness: Harness) -> None:
    started: list[int] = []
    gates: dict[int, asyncio.Event] = {}

    @job(id=unique_id("slotted"), concurrency=1)
    async def slotted(payload: dict[str, int], io: IO, ctx: Context) -> int:
        async def step(task: Task) -> int:
            started.append(payload["n"])
            await gates.setdefault(payload["n"], asyncio.Event()).wait()
            return payload["n"]

        return await io.run_task("step", step)

    await harness.start(slotted, concurrency=4)
    engine = harness.engine

    async def cancel(run_id: str) -> str | None:
        try:
            return await engine.cancel(run_id)
        except InvalidRunStateError:
            return None  # it ended first

    outcomes: set[tuple[str, str]] = set()
    for i in range(ITERATIONS):
        a, b = 2 * i, 2 * i + 1
        holder = await engine.trigger(slotted.id, {"n": a})
        # The slot is free (the last iteration's runs ended): the holder gets it.
        await until(lambda a=a: a in started, f"run {a} taking the free slot", 60)  # type: ignore[misc]
        waiter = await engine.trigger(slotted.id, {"n": b})
        assert (await engine.get_run(waiter))["status"] == "QUEUED"
        gates.setdefault(b, asyncio.Event()).set()  # b completes at once if it ever runs
        if i % 2 == 0:
            # The waiter canceled as the holder ends and frees the slot it waits for.
            gates.setdefault(a, asyncio.Event()).set()
            canceled, before = waiter, await cancel(waiter)
        else:
            # The holder canceled as it ends: either way the waiter gets the slot.
            gates.setdefault(a, asyncio.Event()).set()
            canceled, before = holder, await cancel(holder)
        runs = {run_id: await engine.wait_for(run_id, 60) for run_id in (holder, waiter)}
        other = waiter if canceled == holder else holder
        assert runs[other]["status"] == "COMPLETED", runs[other]
        assert runs[other]["output"] == (b if other == waiter else a)
        run = runs[canceled]
        if before is None:  # the cancel came too late, and said so
            assert run["status"] == "COMPLETED", run
        else:
            assert before in ("QUEUED", "RUNNING"), before
            assert (run["status"], run["output"]) == ("CANCELED", None), run
        outcomes.add(("holder" if canceled == holder else "waiter", run["status"]))
        assert started.count(a) == 1 and started.count(b) <= 1, started

    # No slot leaked: nothing of the job is RUNNING, and a new run gets the slot at once.
    _, counts = await harness.store.waits([])
    assert not any(count for (job_id, _), count in counts.items() if job_id == slotted.id)
    last = 2 * ITERATIONS
    gates[last] = asyncio.Event()
    gates[last].set()
    view = await harness.run(slotted, {"n": last}, timeout=60)
    assert (view["status"], view["output"]) == ("COMPLETED", last), view
    assert ("holder", "CANCELED") in outcomes or ("waiter", "CANCELED") in outcomes, outcomes
