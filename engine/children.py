"""Child runs (`io.invoke`): who a child is, what its end tells its parent, and how the
children an execution starts at once are committed together.

A child's id is derived from its parent run, the invoking task's path and the attempt, so the
same start, committed twice (a commit retried after a lost connection), creates one run; and the
start is written with the parent's WAITING task in one transaction fenced by the parent's lease,
so a crash, a replay or a zombie execution never creates a second child.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any

from .records import ChildStart

if TYPE_CHECKING:
    from .replay import Replay


def child_run_id(parent_run_id: str, path: tuple[str, ...], attempt: int) -> str:
    """The child's run id: the same for the same parent, task path and attempt, and shaped like
    any other run id (32 hex digits)."""
    ident = "\x00".join((parent_run_id, *path, str(attempt)))
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def parent_outcome(
    child_id: str,
    job_id: str,
    status: str,
    output: Any = None,
    output_type: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the parent's invoke task records when its child ends: the child's output (and its
    type, so the parent gets the same type back), or a ChildRunError naming the child."""
    if status == "COMPLETED":
        return {"output": output, "output_type": output_type, "error": None}
    cause = None
    if error:
        cause = {k: error.get(k) for k in ("type", "message", "module") if k in error}
    why = f": {cause.get('type')}: {cause.get('message')}" if cause else ""
    verb = "was canceled" if status == "CANCELED" else "failed"
    recorded = {
        "type": "ChildRunError",
        "module": "engine.exceptions",
        "message": f"child run {child_id} ({job_id}) {verb}{why}",
        "run_id": child_id,
        "job_id": job_id,
        "status": status,
        "error": cause,
    }
    return {"output": None, "output_type": None, "error": recorded}


# A child that ends while its parent still waits for others wakes the parent this many seconds
# later at most, not at once: a parent gathering many children is then replayed a few times
# per second while they end, not once per child. The last child wakes it at once. It stays
# because every wake costs a claim, a load of the parent's task log and a replay of each of
# its invokes: woken once per child, n children cost n replays of up to n invokes. Nor can
# the last child's end be the only wake: the engine cannot tell how the parent awaits its
# children (a gather, `asyncio.wait(FIRST_COMPLETED)`, a failure that should end it early).
CHILD_WAKE_DELAY = 0.25

# What a cascade records on the children it cancels.
CANCELED_WITH_PARENT = {
    "type": "ParentRunEnded",
    "message": "canceled because its parent run ended (see parent_run_id)",
}


class Starts:
    """The children one execution starts, committed in groups: the invokes reached in one turn
    of the event loop (the branches of a gather) share one transaction, and those that arrive
    while it commits share the next (as engine.groupcommit does for task writes)."""

    def __init__(self, replay: Replay) -> None:
        self._replay = replay
        self._queue: list[tuple[ChildStart, asyncio.Future[None]]] = []
        self._drain_task: asyncio.Task[None] | None = None

    async def submit(self, start: ChildStart) -> None:
        """Returns once the child and its parent's task are committed; raises what ended the
        execution (LeaseLost, WriteFailed, a refusal) otherwise."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((start, future))
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain())
        await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    await self._replay.start_children([start for start, _ in batch])
                except BaseException as exc:  # every start in the batch hears of it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._drain_task = None
