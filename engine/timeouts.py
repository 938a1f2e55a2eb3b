"""A task attempt's `timeout=`: the attempt runs as its own asyncio task, given up on in time.

Giving up must hold even when the attempt swallows its cancellation, so the outcome is decided
here, not by the attempt: past its timeout it is the timeout, whatever the attempt does next.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from .exceptions import LeaseLost, TaskTimeoutError
from .replay import timed_out

T = TypeVar("T")

# The job's logger: a left-behind attempt is the job's problem, not the engine's.
_log = logging.getLogger("engine.job")

# How long a timed-out attempt gets to unwind after it is cancelled (its `finally` blocks, an
# HTTP client closing) before the timeout is recorded anyway.
TIMEOUT_GRACE = 1.0


async def with_timeout(awaitable: Awaitable[T], timeout: float | None, where: str) -> T:
    """Awaits the attempt for at most `timeout` seconds, else raises TaskTimeoutError.

    The attempt runs as its own asyncio task (in a copy of the caller's context), so the
    timeout holds even when it swallows its cancellation: it returns, raises something else, or
    keeps going, the outcome is the timeout. An attempt still running after TIMEOUT_GRACE is
    left behind, and any `io` call it makes raises the timeout error.
    """
    if timeout is None:
        return await awaitable
    expired: list[BaseException] = []
    context = contextvars.copy_context()
    context.run(timed_out.set, (*timed_out.get(), expired))
    inner: asyncio.Task[T] = asyncio.get_running_loop().create_task(
        _as_coroutine(awaitable), context=context
    )
    try:
        done, _ = await asyncio.wait({inner}, timeout=timeout)
        if done:
            return inner.result()
        error = TaskTimeoutError(f"{where} ran longer than its timeout of {timeout}s")
        expired.append(error)
        inner.cancel()
        await asyncio.wait({inner}, timeout=TIMEOUT_GRACE)
    except asyncio.CancelledError:
        # The run was canceled (or the worker stops): the attempt stops with it.
        expired.append(LeaseLost())
        inner.cancel()
        raise
    finally:
        inner.add_done_callback(_discard_outcome)
    if not inner.done():
        _log.warning("%s ignored its cancellation after its timeout; left running", where)
    raise error


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _discard_outcome(task: asyncio.Task[Any]) -> None:
    # A timed-out attempt's own result or error is not its outcome: retrieve it so asyncio
    # does not report it as never retrieved.
    if not task.cancelled():
        task.exception()
