"""Live output: a run publishes chunks to named streams; any client follows them, in order.

Writing (`io.stream.write(name, data)`): a chunk is checked and numbered at once, buffered, and
committed by a background flush, so a write per token costs a dict append, not a round trip.
While one flush is in flight the next chunks gather behind it (a group commit): a reader sees a
chunk one commit after it was written, however fast the job writes. Flushes are fenced on the
run's lease epoch like every other write of an execution (a zombie publishes nothing), and
everything buffered is committed before the execution records a task or its own end, so a
completed task's chunks are never lost to a crash.

Identity: a chunk is (run, stream, seq) for readers, and (task, attempt, n) for the writer: the
enclosing task's path, its attempt (0 at the job's top level) and the n-th write of that
writer to that stream. A replay counts its writes again and skips those already recorded; a task
re-run after a crash writes under its new attempt, after the lost attempt's chunks, its first
chunk flagged `restart` for readers.

Reading (`Engine.read_stream`): the chunks after a position, then, while the run goes on, the
next ones as they are committed (PostgreSQL: LISTEN/NOTIFY; SQLite: a short poll), until the
run has ended and every chunk it wrote was read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import clock, codec, limits, secrets
from .exceptions import DatabaseError, EngineError, LeaseLost, WriteFailed, WriteRefusedError
from .records import ChunkWrite
from .replay import current_attempt, current_path, path_text
from .schema import FINAL_RUN_STATUSES

if TYPE_CHECKING:
    from .replay import Replay
    from .store import Store

log = logging.getLogger("engine.streams")

MAX_STREAM_NAME_LENGTH = 200
# One chunk's JSON, at most: a stream carries pieces of output (tokens, progress, rows), and a
# bigger value belongs in a task's output.
MAX_CHUNK_BYTES = 256 * 1024
# A job that writes faster than the database commits waits once this many chunks are buffered.
MAX_BUFFERED = 2000
# A reader reads at most this many chunks per query.
READ_BATCH = 500


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One chunk as a reader sees it: `seq` is its position (pass it as `after=` to resume
    there), `data` what the run wrote. `task` and `attempt` say who wrote it (the enclosing
    task's key path and attempt; `()` and 0 at the job's top level); `restart` marks the first
    chunk of a task's attempt that follows chunks of an earlier, lost attempt of that task."""

    seq: int
    data: Any
    task: tuple[str, ...]
    attempt: int
    written_at: datetime
    restart: bool = False

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "data": self.data,
            "task": list(self.task),
            "attempt": self.attempt,
            "restart": self.restart,
            "written_at": self.written_at.isoformat(),
        }


def check_name(name: Any, where: str) -> str:
    return limits.check_text(name, f"{where} stream name", MAX_STREAM_NAME_LENGTH, control=True)


class StreamWriter:
    """One execution's stream writes: numbered at once, committed in order by one flush at a
    time, fenced on the execution's epoch."""

    def __init__(self, replay: Replay) -> None:
        self._replay = replay
        self._store = replay.store
        # Per stream: the next seq, and per writer (task, attempt) the n recorded before this
        # execution (loaded before its first write to the stream) and the n it has reached.
        self._next_seq: dict[str, int] = {}
        self._recorded: dict[tuple[str, str, int], int] = {}
        self._counted: dict[tuple[str, str, int], int] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._buffer: list[ChunkWrite] = []
        self._flushing: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self.used = False

    async def write(self, stream: str, data: Any) -> None:
        where = f"io.stream.write({stream!r})"
        stream = check_name(stream, "io.stream.write()")
        self._replay.check_alive()
        self._raise_failure()
        value = codec.check(data, f"{where} data")
        text = codec.dumps(value)
        if secrets.appears_in(text):  # nothing secret is recorded, streams included
            value = secrets.scrub(value)
            text = codec.dumps(value)
        if len(text) > MAX_CHUNK_BYTES and len(text.encode()) > MAX_CHUNK_BYTES:
            raise EngineError(
                f"{where}: the chunk is {len(text.encode())} bytes of JSON: write at most "
                f"{MAX_CHUNK_BYTES} per chunk (split it, or return big values as a task's output)"
            )
        if stream not in self._next_seq:
            await self._load(stream)
        writer = (stream, path_text(current_path.get()), current_attempt.get())
        n = self._counted.get(writer, 0) + 1
        self._counted[writer] = n
        if n <= self._recorded.get(writer, 0):
            return  # recorded by an earlier execution: a replay writes it once
        seq = self._next_seq[stream]
        self._next_seq[stream] = seq + 1
        number = type(value) is int or type(value) is float
        self._buffer.append(
            ChunkWrite(stream, seq, writer[1], writer[2], n, text, number, clock.now())
        )
        self.used = True
        if self._flushing is None:
            self._flushing = asyncio.ensure_future(self._drain())
        if len(self._buffer) >= MAX_BUFFERED:
            await self.flush()

    async def _load(self, stream: str) -> None:
        """What this run recorded in `stream` before: its last seq and each writer's count."""
        loading = self._loading.get(stream)
        if loading is None:
            loading = self._loading[stream] = asyncio.ensure_future(self._read_writers(stream))
        await asyncio.shield(loading)

    async def _read_writers(self, stream: str) -> None:
        try:
            rows = await self._store.stream_writers(self._replay.run_id, stream)
        except DatabaseError as exc:
            del self._loading[stream]
            if exc.transient:
                self._replay.lost = True
                raise WriteFailed(exc.message) from exc
            raise
        last = 0
        for task, attempt, n, seq in rows:
            self._recorded[(stream, task, attempt)] = n
            last = max(last, seq)
        self._next_seq[stream] = last + 1

    async def _drain(self) -> None:
        """Commits the buffer, batch after batch, until it is empty."""
        try:
            while self._buffer and self._failure is None:
                batch, self._buffer = self._buffer, []
                replay = self._replay
                try:
                    held = await self._store.write_chunks(replay.run_id, replay.epoch, batch)
                except DatabaseError as exc:
                    self._failure = (
                        WriteFailed(exc.message)
                        if exc.transient
                        else WriteRefusedError(
                            f"the database refused to record stream chunks: {exc.message}"
                        )
                    )
                    if exc.transient:
                        replay.lost = True
                    else:
                        replay.fatal = self._failure
                    break
                if not held:
                    self._failure = LeaseLost()
                    replay.lost = True
                    break
                announce_local(self._store.url, replay.run_id)
        finally:
            self._flushing = None

    async def flush(self) -> None:
        """Returns once every chunk written so far is committed; raises what stopped that."""
        while self._flushing is not None:
            await asyncio.shield(self._flushing)
            if self._buffer and self._flushing is None and self._failure is None:
                self._flushing = asyncio.ensure_future(self._drain())
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure


class StreamIO:
    """`io.stream`: publish live output from a run (docs/triggers.md, "Streams")."""

    def __init__(self, replay: Replay) -> None:
        self._replay = replay

    def check_name(self, name: Any) -> str:
        """`name` if it can name a stream, else one EngineError saying why (integrations check
        a stream's name before their call starts)."""
        return check_name(name, "io.stream")

    async def write(self, name: str, data: Any) -> None:
        """Appends `data` (JSON data) to the run's stream `name`. Returns at once: the chunk is
        committed in the background, before the run's next step is recorded."""
        replay = self._replay
        if replay.streams is None:
            replay.streams = StreamWriter(replay)
        await replay.streams.write(name, data)


# -- reading ------------------------------------------------------------------------------------


async def read_stream(
    store: Store, run_id: str, stream: str, after: int | None = None
) -> AsyncIterator[StreamChunk]:
    """The chunks of `run_id`'s `stream` after position `after`, as they come, until the run
    has ended and each chunk it wrote has been yielded."""
    check_name(stream, "read_stream()")
    if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 0):
        raise EngineError(f"after={after!r}: give the seq of the last chunk read (0 or more)")
    await store.get_run(run_id)  # an unknown run is one clear error, not an endless wait
    position = after or 0
    with listening(store.url, run_id) as woken:
        async with store.stream_wakeups(run_id, woken):
            failures = 0
            while True:
                woken.clear()
                try:
                    status, rows = await store.read_chunks(run_id, stream, position, READ_BATCH)
                    failures = 0
                except DatabaseError as exc:
                    failures += 1
                    if not exc.transient or failures * store.stream_poll > store.patience:
                        raise
                    await asyncio.sleep(min(2.0, 0.05 * 2**failures))
                    continue
                for seq, task, attempt, data, written_at, restart in rows:
                    position = seq
                    yield StreamChunk(
                        seq, data, tuple(json.loads(task)), attempt, written_at, bool(restart)
                    )
                if rows:
                    continue
                # The run's status was read before its chunks: once it has ended, every chunk
                # it wrote was committed before that, so this read was the last.
                if status is None or status in FINAL_RUN_STATUSES:
                    return
                try:
                    await asyncio.wait_for(woken.wait(), store.stream_poll)
                except TimeoutError:
                    pass


# Readers in this process hear of a flush without a query (a worker and a reader in one
# process, as in tests and in an app that serves its runs' output).
_local_readers: dict[tuple[str, str], set[asyncio.Event]] = {}


@contextmanager
def listening(url: str, run_id: str) -> Iterator[asyncio.Event]:
    event = asyncio.Event()
    _local_readers.setdefault((url, run_id), set()).add(event)
    try:
        yield event
    finally:
        readers = _local_readers.get((url, run_id), set())
        readers.discard(event)
        if not readers:
            _local_readers.pop((url, run_id), None)


def announce_local(url: str, run_id: str) -> None:
    for event in _local_readers.get((url, run_id), ()):
        event.set()
