"""The state of one execution of a run: what was recorded, what this execution has reached.

`io` consults it for every step (look up the recorded task, record a new one), and the executor
watches it to know when every branch of the job is parked on a wait, which is when the run can
be unloaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from . import clock, limits, serialization
from .events import Wait
from .exceptions import (
    DatabaseError,
    DuplicateKeyError,
    LeaseLost,
    Suspend,
    WriteFailed,
    WriteRefusedError,
)
from .records import ChildStart, LogWrite, TaskRow, TaskWrite
from .store import Store

if TYPE_CHECKING:
    from .streams import StreamWriter

T = TypeVar("T")

log = logging.getLogger("engine.executor")

# The keys of the tasks enclosing the code that is running now: () at the job's top level.
current_path: ContextVar[tuple[str, ...]] = ContextVar("engine_current_path", default=())
# Inside task attempts run under `timeout=` (one list per enclosing attempt): a list holds the
# timeout's error once its attempt was given up on, so code that swallowed the cancellation and
# kept going records nothing more.
timed_out: ContextVar[tuple[list[BaseException], ...]] = ContextVar("engine_timed_out", default=())
# The attempt of the innermost enclosing task (0 at the job's top level): stream chunks are
# recorded per writer, so a task re-run after a crash writes anew (engine.streams).
current_attempt: ContextVar[int] = ContextVar("engine_current_attempt", default=0)


def path_text(path: tuple[str, ...]) -> str:
    # Every step computes its parent's: the top level (most steps) needs no encoder.
    return _encode_path(list(path)) if path else "[]"


_encode_path = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class Replay:
    store: Store
    run_id: str
    epoch: int
    recorded: dict[tuple[str, str], TaskRow]
    logged: set[tuple[str, str]]
    next_seq: int = 0
    seen: set[tuple[str, str]] = field(default_factory=set)
    log_counters: dict[tuple[str, str], int] = field(default_factory=dict)
    pending_logs: list[LogWrite] = field(default_factory=list)
    # Parking: each waiting branch holds a future here with the time it is due (None = poll).
    parked: list[tuple[asyncio.Future[None], float | None]] = field(default_factory=list)
    in_flight: int = 0
    progress: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    unloading: bool = False
    draining: bool = False
    wake_at: float | None = None
    lost: bool = False
    # A fatal signal (a divergence, a permanent write refusal): once set, every later `io`
    # call raises it again and nothing more is recorded, even if the job caught it.
    fatal: BaseException | None = None
    background: list[asyncio.Future[None]] = field(default_factory=list)
    job_task: asyncio.Future[Any] | None = None
    # The worker executing the run: recorded with each task as who ran its latest attempt.
    worker: str | None = None
    # The execution's stream writes (engine.streams), once it makes one.
    streams: StreamWriter | None = None

    @classmethod
    async def load(cls, store: Store, run_id: str, epoch: int, worker: str | None = None) -> Replay:
        rows, logged = await store.load_replay(run_id)
        recorded = {(r.parent_path, r.key): r for r in rows}
        next_seq = max((r.seq for r in rows), default=0) + 1
        return cls(store, run_id, epoch, recorded, logged, next_seq, worker=worker)

    # -- identity --------------------------------------------------------------------------------

    def claim_key(self, key: str) -> tuple[str, str, tuple[str, ...]]:
        """(parent_path, key, own path) for a new step; a key used twice is an error."""
        self.check_alive()
        if not isinstance(key, str) or not key:
            raise DuplicateKeyError(f"step key {key!r}: give every step a non-empty string key")
        limits.check_text(key, "step key", limits.MAX_KEY_LENGTH, control=True)
        parent = current_path.get()
        ident = (path_text(parent), key)
        if ident in self.seen:
            where = " > ".join(parent) or "the job"
            raise DuplicateKeyError(
                f"key {key!r} is used twice in {where}: sibling steps need distinct keys "
                f'(for loops, put the index in the key, e.g. f"{key}-{{i}}")'
            )
        self.seen.add(ident)
        return ident[0], key, (*parent, key)

    def replayed(self, key: str, kind: str, name: str) -> TaskRow | None:
        """The COMPLETED or ERRORED task a step of this kind recorded under `key`, its key
        claimed, when replaying it needs no suspension point and nothing can go wrong (the
        execution goes on, the key is fresh, the kinds agree). None otherwise: the step then
        goes the usual way, which raises or runs as it always does."""
        if self.lost or self.fatal is not None or self.unloading or type(key) is not str:
            return None
        if any(timed_out.get()):
            return None
        ident = (path_text(current_path.get()), key)
        row = self.recorded.get(ident)
        if row is None or row.status not in _REPLAYABLE or ident in self.seen:
            return None
        if row.kind != kind or row.name != name:
            return None
        self.seen.add(ident)
        self.progress += 1  # a step came and went: the supervisor sees the execution moving
        return row

    def take_seq(self, ident: tuple[str, str]) -> int:
        row = self.recorded.get(ident)
        if row is not None:
            return row.seq
        seq = self.next_seq
        self.next_seq += 1
        return seq

    # -- writes ----------------------------------------------------------------------------------

    async def write(self, task: TaskWrite) -> None:
        """Commits a task before the job may go on; raises LeaseLost when fenced out."""
        if self.lost:
            raise LeaseLost()
        if self.fatal is not None:  # nothing more is recorded after a fatal signal
            raise self.fatal
        if self.streams is not None:
            # Chunks written before this step's outcome are committed first: a completed task
            # is never replayed without the chunks it wrote.
            await self.streams.flush()
        logs, self.pending_logs = self.pending_logs, []
        try:
            written = await self.store.write_task(self.run_id, self.epoch, task, logs, self.worker)
        except DatabaseError as exc:
            if exc.transient:
                # Outlasted the store's patience. The job must not go on as if the step were
                # recorded, nor catch this as an error: the run is picked up again later.
                self.lost = True
                raise WriteFailed(exc.message) from exc
            await self._record_refusal(task, exc)
        if not written:
            self.lost = True
            raise LeaseLost()
        # Later calls in this same execution (a parent retried in place) find it recorded.
        self._remember(task)

    async def record_wait(self, task: TaskWrite, wait: Wait) -> tuple[str, Any]:
        """Commits a wait for an event or a signal (engine.events) before the job goes on: the
        task's (status, output), COMPLETED at once when a kept signal was waiting for it."""
        self.check_alive()
        outcome = await self._guarded(
            lambda: self.store.record_wait(self.run_id, self.epoch, task, wait, self.worker)
        )
        if outcome is None:
            self.lost = True
            raise LeaseLost()
        status, output = outcome
        self._remember(dataclasses.replace(task, status=status, output=output))
        return status, output

    async def expire_wait(self, parent_path: str, key: str) -> tuple[str, Any]:
        """Ends a wait whose timeout passed, unless a delivery settled it first: its
        (status, output) as recorded."""
        self.check_alive()
        outcome = await self._guarded(
            lambda: self.store.expire_wait(self.run_id, self.epoch, parent_path, key)
        )
        if outcome is None:
            self.lost = True
            raise LeaseLost()
        return outcome

    async def _guarded(self, write: Callable[[], Awaitable[T]]) -> T:
        """A write outside the hot path: one that outlasted the store's patience ends the
        execution like a lost lease (the run is picked up again later)."""
        try:
            return await write()
        except DatabaseError as exc:
            if exc.transient:
                self.lost = True
                raise WriteFailed(exc.message) from exc
            raise

    async def start_children(self, starts: list[ChildStart]) -> None:
        """Commits child runs with their WAITING invoke tasks (engine.children), fenced like a
        task write; raises LeaseLost when fenced out."""
        self.check_alive()
        logs, self.pending_logs = self.pending_logs, []
        try:
            written = await self.store.start_children(
                self.run_id, self.epoch, starts, logs, self.worker
            )
        except DatabaseError as exc:
            if exc.transient:
                self.lost = True
                raise WriteFailed(exc.message) from exc
            # Refused for good (nothing was written): the run ends FAILED with it, once.
            self.fatal = WriteRefusedError(
                f"the database refused to start {len(starts)} child run(s) (step "
                f"{starts[0].task.key!r} among them): {exc.message}"
            )
            raise self.fatal from exc
        if not written:
            self.lost = True
            raise LeaseLost()
        for start in starts:
            self._remember(start.task)

    def _remember(self, task: TaskWrite) -> None:
        ident = (task.parent_path, task.key)
        before = self.recorded.get(ident)
        self.recorded[ident] = _row(task, before.retry_base if before is not None else 0)

    async def keep_lost_attempt(self, row: TaskRow) -> None:
        """The attempt a lost execution left RUNNING goes to the attempt history, before the
        step runs again and its row is overwritten."""
        self.check_alive()
        try:
            await self.store.keep_lost_attempt(self.run_id, self.epoch, row.parent_path, row.key)
        except DatabaseError as exc:
            if exc.transient:
                self.lost = True
                raise WriteFailed(exc.message) from exc
            # Bookkeeping only: the step itself can still run and be recorded.
            log.warning("run %s: keeping the lost attempt of %r failed: %s", self.run_id,
                        row.key, exc)  # fmt: skip

    async def _record_refusal(self, task: TaskWrite, exc: DatabaseError) -> NoReturn:
        """The database refused this outcome for good: record the task ERRORED with the
        database's message (a minimal row, without the refused values) and make the refusal
        fatal, so the run ends FAILED once and the step is never run again for it."""
        refusal = WriteRefusedError(
            f"the database refused to record step {task.key!r}: {exc.message}"
        )
        minimal = dataclasses.replace(
            task,
            status="ERRORED",
            params=None,
            output=None,
            output_type=None,
            error=serialization.encode_error(refusal),
            due_at=None,
            poll_state=None,
            next_poll_at=None,
            completed_at=clock.now(),
            usage=None,
            retried=False,
        )
        try:
            written = await self.store.write_task(self.run_id, self.epoch, minimal, (), self.worker)
        except DatabaseError as again:
            if again.transient:
                self.lost = True
                raise WriteFailed(again.message) from again
            # Refused too: the executor finishes the run FAILED with the refusal directly.
            self.fatal = refusal
            raise refusal from exc
        if not written:
            self.lost = True
            raise LeaseLost()
        self.fatal = refusal
        self._remember(minimal)
        raise refusal from exc

    def forget_children(self, path: tuple[str, ...]) -> None:
        """A step is retried in place: its subtasks may be reached again by their keys."""
        depth = len(path)
        self.seen = {
            ident for ident in self.seen
            if tuple(json.loads(ident[0]))[:depth] != path
        }  # fmt: skip

    def write_soon(self, task: TaskWrite) -> None:
        """Queues a write the job need not wait for; the executor awaits it before the end."""
        self.background.append(asyncio.ensure_future(self.write(task)))

    async def settle_background(self) -> bool:
        """Awaits the queued writes; False when one failed (the lease is gone). A refusal
        recorded as the run's fatal error is not a lost lease: the run ends FAILED with it."""
        results = await asyncio.gather(*self.background, return_exceptions=True)
        self.background.clear()
        if self.streams is not None:
            try:
                await self.streams.flush()
            except BaseException as exc:  # the chunks' failure is the execution's
                results.append(exc)
        return not any(isinstance(r, BaseException) and r is not self.fatal for r in results)

    def log(self, level: str, message: str, fields: dict[str, Any] | None) -> bool:
        """Buffers a log line unless a previous execution wrote it; True when it is new.

        Nothing is buffered once the execution is over for the job (fatal signal, lease lost).
        """
        if self.lost or self.fatal is not None:
            return False
        parent = path_text(current_path.get())
        digest = hashlib.sha1(f"{level}\x00{message}".encode()).hexdigest()[:16]
        n = self.log_counters.get((parent, digest), 0) + 1
        self.log_counters[(parent, digest)] = n
        line = f"{digest}:{n}"
        if (parent, line) in self.logged:
            return False
        self.pending_logs.append(LogWrite(parent, line, level, message, fields, clock.now()))
        return True

    def take_logs(self) -> list[LogWrite]:
        logs, self.pending_logs = self.pending_logs, []
        return logs

    # -- flow ------------------------------------------------------------------------------------

    def enter(self) -> None:
        """A step starts: the execution is busy until it returns or parks."""
        self.check_alive()
        if self.unloading:
            raise Suspend()
        self.in_flight += 1
        self.progress += 1

    def check_alive(self) -> None:
        """Raises the signal that ended this execution for the job, again: a job that caught
        it (a DivergenceError, a CancelledError on cancel) cannot start another step."""
        if self.lost:
            raise LeaseLost()
        if self.fatal is not None:
            raise self.fatal
        for expired in timed_out.get():
            if expired:
                raise expired[0]

    def leave(self) -> None:
        self.in_flight -= 1
        self.progress += 1
        self.changed.set()

    async def park(self, due_at: float | None) -> None:
        """Waits here until the executor unloads the run (raising Suspend)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (future, due_at)
        self.parked.append(entry)
        self.leave()  # a parked step no longer keeps the execution busy
        try:
            await future
        finally:
            self.in_flight += 1
            self.parked.remove(entry)

    def wake_time(self) -> float | None:
        due = [d for _, d in self.parked if d is not None]
        return min(due) if due else None

    def abort(self) -> None:
        """The run was canceled (or taken over): stop now, interrupting the step in flight."""
        self.lost = True
        if self.job_task is not None and not self.job_task.done():
            self.job_task.cancel()

    def drain(self) -> None:
        """The worker is stopping: start no new step; unload once the running ones commit."""
        self.draining = True
        self.unloading = True
        self.changed.set()

    def unload(self) -> None:
        """Every branch is parked: make each raise Suspend, remembering when to wake."""
        self.wake_at = clock.now() if self.draining else self.wake_time()
        self.unloading = True
        for future, _ in self.parked:
            if not future.done():
                future.set_exception(Suspend())


# What `Replay.replayed` hands back as it is: a recorded outcome (a cancel takes the usual way).
_REPLAYABLE = frozenset({"COMPLETED", "ERRORED"})


class Recorded(asyncio.Future[Any], Coroutine[Any, Any, Any]):
    """A recorded outcome as what `await io.<step>(...)` takes: a done future, so
    `asyncio.gather` over a thousand replayed steps adds no task, no loop turn and no
    suspension point per branch; and a coroutine, so that `asyncio.create_task` and task
    groups accept it as they accept the coroutine of a step that really runs."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        super().__init__(loop=asyncio.get_running_loop())
        if error is not None:
            self.set_exception(error)
        else:
            self.set_result(value)

    def send(self, value: Any) -> Any:
        # A task wrapping it (create_task) steps it once: the outcome, returned or raised.
        raise StopIteration(self.result())

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        raise typ if val is None else val

    def close(self) -> None:
        return None


def _row(task: TaskWrite, retry_base: int) -> TaskRow:
    due = datetime.fromtimestamp(task.due_at, UTC) if task.due_at is not None else None
    return TaskRow(
        task.parent_path, task.key, task.kind, task.name, task.status, task.attempts,
        task.output, task.output_type, task.error, due, task.seq, retry_base,
        task.rate_limit_wait,
    )  # fmt: skip
