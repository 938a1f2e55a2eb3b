"""`io`: everything a job does durably. Each call is a task in the log, found again on replay.

A step is: look up the recorded task (by parent path and key) -> return or raise what was
recorded, or run it -> commit the outcome before returning. Waits park the branch that reached
them; the executor unloads the run once every branch is parked or finished.
"""

from __future__ import annotations

import asyncio
import logging
import typing
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from . import (
    children,
    clock,
    codec,
    events,
    launch,
    limits,
    pollers,
    ratelimit,
    secrets,
    serialization,
    tracing,
)
from .exceptions import (
    DatabaseError,
    DivergenceError,
    EngineError,
    LeaseLost,
    NotSerializableError,
    WriteFailed,
)
from .integration import Integration
from .records import ChildStart, TaskRow, TaskWrite
from .replay import Recorded, Replay, current_attempt, current_path, path_text
from .retry import NO_RETRY, RetryPolicy, is_retryable
from .streams import StreamIO
from .timeouts import with_timeout

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

T = TypeVar("T")

Encoder = Callable[[Any], tuple[Any, str | None]]
Decoder = Callable[[Any, str | None], Any]

_log = logging.getLogger("engine.job")


@dataclass(frozen=True)
class Task:
    """What a task function receives: who it is and which attempt this is."""

    run_id: str
    key: str
    name: str
    path: tuple[str, ...]
    attempt: int
    params: Any

    @property
    def idempotency_key(self) -> str:
        """Stable across attempts and crashes: give it to APIs that deduplicate requests."""
        return f"{self.run_id}:{'/'.join(self.path)}"


class Logger:
    """`io.logger`: lines recorded in the task log once, never again on replay."""

    def __init__(self, replay: Replay, run_id: str) -> None:
        self._replay = replay
        self._run_id = run_id

    def _emit(self, level: str, message: str, fields: dict[str, Any]) -> None:
        # A log line is diagnostic text: never refused, stored with NUL and lone surrogates
        # escaped (engine.codec.escape_text); fields the codec refuses are stored as reprs.
        message = codec.escape_text(str(message))
        try:
            fields = codec.check(fields, f"io.logger.{level.lower()}({message!r})")
        except NotSerializableError:
            fields = {
                codec.escape_text(str(k)): codec.escape_text(repr(v)) for k, v in fields.items()
            }
        message, fields = secrets.scrub(message), secrets.scrub(fields)
        if self._replay.log(level, message, fields or None):
            _log.log(getattr(logging, level), "[%s] %s %s", self._run_id, message, fields or "")

    def debug(self, message: str, **fields: Any) -> None:
        self._emit("DEBUG", message, fields)

    def info(self, message: str, **fields: Any) -> None:
        self._emit("INFO", message, fields)

    def warn(self, message: str, **fields: Any) -> None:
        self._emit("WARNING", message, fields)

    warning = warn

    def error(self, message: str, **fields: Any) -> None:
        self._emit("ERROR", message, fields)


def _return_annotation(fn: Callable[..., Any]) -> Any:
    """The declared return type of a task function, if any (it decides how outputs round-trip).

    Most task functions declare none; those that do are resolved once per code object, since a
    job's nested functions are new objects on every execution.
    """
    if "return" not in getattr(fn, "__annotations__", {}):
        return None
    code = getattr(fn, "__code__", None)
    return _resolve_annotation(fn) if code is None else _cached_annotation(code, fn)


def _resolve_annotation(fn: Callable[..., Any]) -> Any:
    try:
        annotation = typing.get_type_hints(fn).get("return")
    except Exception:
        return None
    return None if annotation in (None, Any, type(None)) else annotation


_annotations: dict[Any, Any] = {}


def _cached_annotation(code: Any, fn: Callable[..., Any]) -> Any:
    if code not in _annotations:
        if len(_annotations) > 4096:
            _annotations.clear()
        _annotations[code] = _resolve_annotation(fn)
    return _annotations[code]


class IO:
    """The durable calls a job makes. One IO per execution of a run."""

    # Declared here so that engine.integration reads them as names no integration may take.
    run_id: str
    logger: Logger
    stream: StreamIO

    def __init__(self, replay: Replay, run_id: str, tracer: Tracer | None = None) -> None:
        self._replay = replay
        self.run_id = run_id
        self.logger = Logger(replay, run_id)
        # Set only when this execution's span records (engine.tracing): else None, one check.
        self._tracer = tracer
        # `io.stream.write(name, data)`: live output readers follow (engine.streams).
        self.stream = StreamIO(replay)
        self._starts: children.Starts | None = None
        self._marks = _RunningMarks(replay)

    # -- integrations (engine.integration) -----------------------------------------------------

    def _attach(self, integrations: Mapping[str, Integration[Any]]) -> None:
        """Binds the job's integrations to this execution (the executor calls it once)."""
        self._integrations = {name: (i, i.bind(self)) for name, i in integrations.items()}

    def __getattr__(self, name: str) -> Any:
        """`io.<name>`: the integration the job declared under `name`. Typed `Any`, so that a
        user's `mypy --strict` accepts `io.openai...`; `io.use(integration)` is typed exactly."""
        bound = self.__dict__.get("_integrations", {}).get(name)
        if bound is None or name.startswith("_"):
            raise AttributeError(
                f"io has no attribute {name!r}: an integration is reached as io.<name> once "
                f"the job declares it, @job(..., integrations={{{name!r}: ...}})"
            )
        return bound[1]

    def use(self, integration: Integration[T]) -> T:
        """What `integration` bound to for this execution, typed as its `bind` returns it:
        `io.use(openai).chat.completions.create(...)`."""
        for declared, bound in self.__dict__.get("_integrations", {}).values():
            if declared is integration:
                return cast(T, bound)
        raise EngineError(
            f"io.use({integration!r}): the job does not declare this integration; add it to "
            "@job(..., integrations={'name': integration})"
        )

    # -- public calls --------------------------------------------------------------------------

    async def run_task(
        self,
        key: str,
        fn: Callable[[Task], Awaitable[T]],
        *,
        name: str | None = None,
        params: Any = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        rate_limit: str | None = None,
    ) -> T:
        """Runs `fn` once for this run; every later execution returns its recorded output.

        `rate_limit` names a limit the app declared (engine.rate_limits): each attempt waits,
        suspended if need be, until the limit has room for it (docs/flow-control.md)."""
        charge = None
        if rate_limit is not None:
            where = f"io.run_task({key!r}, rate_limit=...)"
            charge = ratelimit.Charge(rate_limit, ratelimit.declared(rate_limit, where))
        annotation = _return_annotation(fn)

        encode = _EngineEncoder("io.run_task", key, annotation)

        def decode(value: Any, type_name: str | None) -> Any:
            return serialization.decode(value, type_name, annotation)

        result: T = await self.call(
            key,
            fn,
            kind="task",
            name=name or str(getattr(fn, "__name__", "task")),
            params=params,
            retry=retry,
            timeout=timeout,
            encode=encode,
            decode=decode,
            rate_limit=charge,
        )
        return result

    async def wait(self, key: str, seconds: float) -> None:
        """A durable sleep: the run is unloaded and resumed when `seconds` have passed."""
        limits.check_seconds(seconds, f"io.wait({key!r}) seconds", limits.MAX_WAIT_SECONDS)
        replay = self._replay
        parent, key, _ = replay.claim_key(key)
        replay.enter()
        try:
            row = replay.recorded.get((parent, key))
            self._check_kind(row, key, "wait", "wait")
            if row is not None and row.status == "COMPLETED":
                return
            now = clock.now()
            seq = replay.take_seq((parent, key))
            params = {"seconds": seconds}
            if row is None:
                due = now + float(seconds)
                await replay.write(
                    TaskWrite(parent, key, "wait", "wait", "WAITING", 0, seq, params=params,
                              due_at=due, started_at=now)
                )  # fmt: skip
            else:
                due = row.due_at.timestamp() if row.due_at else now
            if due > now:
                await replay.park(due)
                return  # not reached: parking ends in Suspend
            # That a due wait is over follows from its due time: recording it need not hold
            # the job up (it commits with the run's next write, before the run's end).
            replay.write_soon(
                TaskWrite(parent, key, "wait", "wait", "COMPLETED", 1, seq, params=params,
                          due_at=due, completed_at=now)
            )  # fmt: skip
        finally:
            replay.leave()

    async def background_poll(
        self,
        key: str,
        url: str,
        *,
        interval: float = pollers.DEFAULT_INTERVAL,
        max_interval: float | None = None,
        backoff: float = 1.0,
        timeout: float = pollers.DEFAULT_TIMEOUT,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Polls `url` from the scheduler while the run is unloaded; returns the 2xx JSON body."""
        pollers.check_http_params(url, headers)
        params = {"url": url, "method": method}
        if headers:
            params["headers"] = headers  # type: ignore[assignment]
        return await self.poll(
            key,
            "http",
            params,
            name="background_poll",
            interval=interval,
            max_interval=max_interval or interval,
            backoff=backoff,
            timeout=timeout,
        )

    async def wait_for_event(
        self,
        key: str,
        name: str,
        *,
        match: Mapping[str, Any] | None = None,
        timeout: float | timedelta | None = None,
    ) -> Any:
        """Suspends the run until an event `name` whose payload has `match`'s keys with equal
        values is sent (`engine events send`, `Engine.send_event`) after this wait is recorded;
        returns its payload, or None once `timeout` (seconds or a timedelta; default and
        longest: 366 days) has passed. docs/triggers.md says which events a wait sees."""
        where = f"io.wait_for_event({key!r})"
        name = events.check_name(name, f"{where} event name")
        seconds = events.timeout_seconds(timeout, where)
        wait = events.event_wait(name, match, where)
        params = {"event": name, "match": wait.match_values, "timeout": seconds}
        return await self._wait_for(key, "event", "wait_for_event", params, seconds, wait)

    async def wait_for_signal(
        self, key: str, name: str, *, timeout: float | timedelta | None = None
    ) -> Any:
        """Suspends the run until signal `name` is sent to it (`engine runs signal`,
        `Engine.signal`); returns its payload, or None once `timeout` has passed. A signal sent
        before the wait is kept for it: the first wait for a name takes the oldest signal."""
        where = f"io.wait_for_signal({key!r})"
        name = events.check_name(name, f"{where} signal name")
        seconds = events.timeout_seconds(timeout, where)
        params = {"signal": name, "timeout": seconds}
        wait = events.Wait("signal", name)
        return await self._wait_for(key, "signal", "wait_for_signal", params, seconds, wait)

    async def _wait_for(
        self, key: str, kind: str, name: str, params: Any, seconds: float, wait: events.Wait
    ) -> Any:
        """A wait settled from outside the run (engine.events): recorded WAITING with its
        index entry; the run is unloaded until a delivery or its timeout wakes it."""
        replay = self._replay
        parent, key, _ = replay.claim_key(key)
        replay.enter()
        try:
            row = replay.recorded.get((parent, key))
            self._check_kind(row, key, kind, name)
            if row is None:
                now = clock.now()
                due = now + seconds
                task = TaskWrite(parent, key, kind, name, "WAITING", 1,
                                 replay.take_seq((parent, key)), params=params, due_at=due,
                                 started_at=now)  # fmt: skip
                status, output = await replay.record_wait(task, wait)
            else:
                status, output = row.status, row.output
                due = row.due_at.timestamp() if row.due_at else clock.now()
            if status == "WAITING":
                if due > clock.now():
                    await replay.park(due)
                # The timeout passed; a delivery that got there first wins.
                status, output = await replay.expire_wait(parent, key)
            if status != "COMPLETED":  # CANCELED: the run was canceled while it waited
                raise LeaseLost()
            return output
        finally:
            replay.leave()

    def invoke(
        self, key: str, job_id: str, payload: Any = None, *, version: str | None = None
    ) -> Coroutine[Any, Any, Any]:
        """Starts a run of `job_id` as this run's child and waits for it to end, suspended
        (no memory held); returns the child's output, or raises ChildRunError when it failed
        or was canceled. The payload is checked as `Engine.trigger` checks it, before anything
        is written. See docs/triggers.md, "Child runs"."""
        # An invoke whose child ended before this execution is its recorded outcome, already
        # there: a parent replaying a gather of 1,000 of them creates no task per branch.
        row = self._replay.replayed(key, "invoke", job_id)
        if row is None:
            return self._invoke(key, job_id, payload, version)
        if row.status == "ERRORED":
            return Recorded(error=serialization.decode_error(row.error or {}))
        try:
            return Recorded(serialization.decode(row.output, row.output_type))
        except DivergenceError as exc:  # a recorded value that cannot be rebuilt ends the run
            self._replay.fatal = exc
            return Recorded(error=exc)

    async def _invoke(self, key: str, job_id: str, payload: Any, version: str | None) -> Any:
        replay = self._replay
        parent, key, path = replay.claim_key(key)
        replay.enter()
        try:
            row = self._look_up(parent, key, "invoke", job_id)
            if row is not None and row.status in _SETTLED:
                return self._replay_outcome(row, serialization.decode)
            # A WAITING task with an attempt since the last `runs retry`: its child runs.
            if row is None or row.attempts <= row.retry_base:
                await self._start_child(parent, key, path, job_id, payload, version, row)
            await replay.park(None)
        finally:
            replay.leave()

    async def _start_child(
        self,
        parent: str,
        key: str,
        path: tuple[str, ...],
        job_id: str,
        payload: Any,
        version: str | None,
        row: TaskRow | None,
    ) -> None:
        replay = self._replay
        try:
            new = await replay.store._patiently(
                "routing a child run",
                lambda: launch.prepare(replay.store, job_id, payload, version=version),
            )
        except DatabaseError as exc:
            if not exc.transient:
                raise
            # Outlasted the store's patience: the run is picked up again later, as after a
            # write that could not be made.
            replay.lost = True
            raise WriteFailed(exc.message) from exc
        attempt = (row.attempts if row is not None else 0) + 1
        child_id = children.child_run_id(self.run_id, path, attempt)
        params = {"job_id": job_id, "version": new.version, "run_id": child_id}
        seq = replay.take_seq((parent, key))
        task = TaskWrite(
            parent, key, "invoke", job_id, "WAITING", attempt, seq, params=params,
            started_at=clock.now(),
        )  # fmt: skip
        if self._starts is None:
            self._starts = children.Starts(replay)
        start = ChildStart(
            task, child_id, job_id, new.version, new.payload, new.priority, new.concurrency,
            new.timeout,
        )  # fmt: skip
        await self._starts.submit(start)

    # -- building blocks for integrations ------------------------------------------------------

    def is_recorded(self, key: str) -> bool:
        """Whether this run already recorded a step under `key` here (in the current parent).

        Lets an integration check its configuration (an API key, say) only when the step will
        really run, and refuse it before anything is written; a replay needs no configuration.
        """
        return (path_text(current_path.get()), key) in self._replay.recorded

    async def poll(
        self,
        key: str,
        poller: str,
        params: Any,
        *,
        name: str,
        interval: float = pollers.DEFAULT_INTERVAL,
        max_interval: float = pollers.DEFAULT_MAX_INTERVAL,
        backoff: float = 1.5,
        timeout: float = pollers.DEFAULT_TIMEOUT,
        kind: str = "poll",
    ) -> Any:
        """A wait performed by the registered poller `poller`; returns the JSON it finished with.

        The first poll happens `interval` seconds after the call; each next one `backoff` times
        later, capped at `max_interval`; after `timeout` the task fails with PollTimeoutError.
        """
        schedule = pollers.PollSchedule(interval, max_interval, backoff, timeout)
        pollers.get(poller)
        replay = self._replay
        parent, key, _ = replay.claim_key(key)
        params = serialization.check_params(params, f"{name}({key!r}) params")
        replay.enter()
        try:
            row = replay.recorded.get((parent, key))
            self._check_kind(row, key, kind, name)
            if row is not None and row.status == "COMPLETED":
                return row.output
            if row is not None and row.status == "ERRORED":
                raise serialization.decode_error(row.error or {})
            if row is None:
                now = clock.now()
                seq = replay.take_seq((parent, key))
                await replay.write(
                    TaskWrite(
                        parent,
                        key,
                        kind,
                        name,
                        "WAITING",
                        1,
                        seq,
                        params=params,
                        poller=poller,
                        poll_state=schedule.state(),
                        next_poll_at=now + schedule.interval,
                        started_at=now,
                    )
                )
            await replay.park(None)
        finally:
            replay.leave()

    async def call(
        self,
        key: str,
        fn: Callable[[Task], Awaitable[Any]],
        *,
        kind: str,
        name: str,
        params: Any = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
        encode: Encoder | None = None,
        decode: Decoder | None = None,
        record_start: bool = False,
        usage: Callable[[Any], dict[str, Any] | None] | None = None,
        rate_limit: ratelimit.Charge | None = None,
    ) -> Any:
        """The durable step every other call is built on: look up, else attempt and record.

        `record_start` commits a RUNNING row before `fn` runs, so attempts are counted even
        when the worker dies during a slow call (used for paid API calls). `usage` reads the
        tokens a paid call spent off its value, recorded with the outcome (engine_task_usage).
        `rate_limit`: what each attempt takes of a shared limit (engine.ratelimit), reserved
        before it starts.
        """
        replay = self._replay
        if not limits.is_plain(name, limits.MAX_NAME_LENGTH):
            limits.check_text(name, f"{kind} {key!r} name", limits.MAX_NAME_LENGTH)
        if timeout is not None:
            limits.check_seconds(
                timeout, f"{name}({key!r}) timeout", limits.MAX_TASK_TIMEOUT, zero=False
            )
        parent, key, path = replay.claim_key(key)
        where = f"{name}({key!r})"
        params = serialization.check_params(params, f"{where} params")
        decode = decode or serialization.decode
        replay.enter()
        try:
            row = self._look_up(parent, key, kind, name)
            if row is not None and row.status in _SETTLED:
                return self._replay_outcome(row, decode)
            attempts = await self._resume(row)
            step = _Step(
                parent=parent,
                key=key,
                path=path,
                kind=kind,
                name=name,
                where=where,
                params=params,
                fn=fn,
                timeout=timeout,
                encode=_encoder(encode, name, key, where),
                policy=retry or NO_RETRY,
                retry_base=row.retry_base if row is not None else 0,
                record_start=record_start,
                usage=usage,
                seq=replay.take_seq((parent, key)),
            )
            held = row
            while True:
                if rate_limit is not None:
                    await self._admit(step, rate_limit, held, attempts)
                    held = None  # a place held across a suspension serves one attempt
                attempts += 1
                attempt = await self._attempt(step, attempts)
                if attempt.error is None:
                    await self._record_success(step, attempt)
                    return decode(attempt.stored, attempt.type_name)
                await self._record_failure(step, attempt, attempt.error)
        finally:
            replay.leave()

    # -- a step's three parts: look up, attempt, record ----------------------------------------

    def _look_up(self, parent: str, key: str, kind: str, name: str) -> TaskRow | None:
        """The task this run recorded here, if any; a different call recorded here diverges."""
        row = self._replay.recorded.get((parent, key))
        self._check_kind(row, key, kind, name)
        return row

    def _replay_outcome(self, row: TaskRow, decode: Decoder) -> Any:
        """What a settled task recorded: its output, rebuilt, or its error, raised again."""
        if row.status == "ERRORED":
            raise serialization.decode_error(row.error or {})
        if row.status == "CANCELED":
            raise LeaseLost()
        try:
            return decode(row.output, row.output_type)
        except DivergenceError as exc:
            # A recorded value that cannot be rebuilt ends the run, like a divergence.
            self._replay.fatal = exc
            raise

    async def _resume(self, row: TaskRow | None) -> int:
        """The attempts made so far by an unsettled task, once a pending retry delay is due.

        A RUNNING task is an attempt whose execution was lost: it is kept as such in the
        attempt history, and the step runs again as the next attempt.
        """
        if row is None:
            return 0
        if row.status == "RUNNING":
            await self._replay.keep_lost_attempt(row)
        elif row.status == "WAITING" and row.due_at and row.due_at.timestamp() > clock.now():
            await self._replay.park(row.due_at.timestamp())
        return row.attempts

    async def _admit(
        self, step: _Step, charge: ratelimit.Charge, held: TaskRow | None, attempts: int
    ) -> None:
        """Waits for the attempt's place under its rate limit (engine.ratelimit), suspended
        when it is far. The wait is not an attempt: its row keeps the count made so far."""
        waiting = partial(step.row, _Attempt(attempts, clock.now()), "WAITING")
        await ratelimit.admit(self._replay, charge, held, waiting)

    async def _attempt(self, step: _Step, number: int) -> _Attempt:
        """Runs the step's function once, under its timeout, and encodes what it returned.

        An exception is the attempt's outcome, returned; control-flow signals pass through.
        """
        if self._tracer is not None:
            return await self._traced_attempt(self._tracer, step, number)
        return await self._run_attempt(step, number)

    async def _run_attempt(self, step: _Step, number: int) -> _Attempt:
        attempt = _Attempt(number, clock.now())
        mark = self._marks.mark(step, attempt)
        task = Task(self.run_id, step.key, step.name, step.path, number, step.params)
        token = current_path.set(step.path)
        attempt_token = current_attempt.set(number)
        try:
            try:
                value = await with_timeout(step.fn(task), step.timeout, step.where)
            finally:
                await mark.settle()
            attempt.value = value
            attempt.stored, attempt.type_name = step.encode(value)
        except Exception as exc:
            attempt.error = exc
        finally:
            current_attempt.reset(attempt_token)
            current_path.reset(token)
        if attempt.error is None and step.usage is not None:
            attempt.usage = step.usage(attempt.value)
        return attempt

    async def _traced_attempt(self, tracer: Tracer, step: _Step, number: int) -> _Attempt:
        """An attempt inside its span (engine.tracing), a child of the current one."""
        span = tracing.start_task(
            tracer, self.run_id, path=step.path, name=step.name, kind=step.kind, attempt=number
        )
        try:
            with tracing.current(span):
                attempt = await self._run_attempt(step, number)
        except BaseException as signal:
            tracing.end_interrupted(span, signal)
            raise
        error = attempt.error
        retrying = error is not None and not self._is_final(step, attempt, error)
        tracing.end_task(span, error, usage=attempt.usage, params=step.params, retrying=retrying)
        return attempt

    async def _record_success(self, step: _Step, attempt: _Attempt) -> None:
        row = step.row(
            attempt,
            "COMPLETED",
            output=attempt.stored,
            output_type=attempt.type_name,
            completed_at=clock.now(),
            usage=attempt.usage,
        )
        await self._replay.write(row)

    async def _record_failure(self, step: _Step, attempt: _Attempt, exc: Exception) -> None:
        """Records a failed attempt: ERRORED and raised when it is final, else a persisted
        retry delay, waited for (the run may be unloaded meanwhile) before the next attempt."""
        replay = self._replay
        used = attempt.number - step.retry_base
        error = serialization.encode_error(exc)
        if self._is_final(step, attempt, exc):
            await replay.write(step.row(attempt, "ERRORED", error=error, completed_at=clock.now()))
            raise exc
        due = clock.now() + step.policy.delay(used, exc)
        await replay.write(step.row(attempt, "WAITING", error=error, due_at=due, retried=True))
        if due > clock.now():
            await replay.park(due)
        replay.forget_children(step.path)

    @staticmethod
    def _is_final(step: _Step, attempt: _Attempt, exc: Exception) -> bool:
        """Whether a failed attempt is the step's last (else it is retried after a delay)."""
        # The retry policy counts the attempts since the last `engine runs retry`.
        used = attempt.number - step.retry_base
        return (
            isinstance(exc, NotSerializableError)
            or used >= step.policy.attempts_for(exc)
            or not is_retryable(exc)
        )

    def _check_kind(self, row: TaskRow | None, key: str, kind: str, name: str) -> None:
        if row is None or (row.kind == kind and row.name == name):
            return
        path = " > ".join((*current_path.get(), key))
        error = DivergenceError(
            f"the run diverged from its recorded history at key {path!r}: the log has a "
            f"{row.kind} {row.name!r} there, but the code now calls {kind} {name!r}. "
            "Code changes that reorder or rename steps need a new job version (runs started "
            "on the old version finish on a worker that still has it)."
        )
        self._replay.fatal = error
        raise error


class _EngineEncoder:
    """The engine's own encoding (engine.serialization), which checks the value itself."""

    def __init__(self, call: str, key: str, annotation: Any = None) -> None:
        self.call, self.key, self.annotation = call, key, annotation

    def __call__(self, value: Any) -> tuple[Any, str | None]:
        where = f"{self.call}({self.key!r}) output"
        return serialization.encode(value, where, self.annotation)


def _checked(encode: Encoder, where: str) -> Encoder:
    """An integration's encoder, its result held to the engine's rules (engine.codec): a value
    the database would refuse must fail the step once, not every write."""

    def checked(value: Any) -> tuple[Any, str | None]:
        stored, type_name = encode(value)
        return codec.check(stored, where), type_name

    return checked


# The recorded outcomes a replay returns (or raises) without running the step again.
_SETTLED = frozenset({"COMPLETED", "ERRORED", "CANCELED"})


@dataclass(slots=True)
class _Step:
    """A step about to run: who it is, what it runs, and how its outcome is kept."""

    parent: str
    key: str
    path: tuple[str, ...]
    kind: str
    name: str
    where: str
    params: Any
    fn: Callable[[Task], Awaitable[Any]]
    timeout: float | None
    encode: Encoder
    policy: RetryPolicy
    retry_base: int
    record_start: bool
    # Reads the tokens a paid call spent off its value (engine_task_usage).
    usage: Callable[[Any], dict[str, Any] | None] | None
    seq: int

    def row(self, attempt: _Attempt, status: str, **fields: Any) -> TaskWrite:
        """The task row an attempt writes; its rows differ only in status and `fields`."""
        return TaskWrite(
            self.parent,
            self.key,
            self.kind,
            self.name,
            status,
            attempt.number,
            self.seq,
            params=self.params,
            started_at=attempt.started,
            **fields,
        )


@dataclass(slots=True)
class _Attempt:
    """One execution of a step's function, and its outcome: a stored value or an error."""

    number: int
    started: float
    value: Any = None
    stored: Any = None
    type_name: str | None = None
    error: Exception | None = None
    # The tokens a paid call spent (engine_task_usage), read off its value once it succeeded.
    usage: dict[str, Any] | None = None


# A step still running after this long is marked RUNNING in the log: a crash during it then
# counts the attempt (the next execution keeps it as LOST, with its worker), and `engine runs
# show` shows the step running. A quicker step writes nothing before its outcome.
MARK_RUNNING_AFTER = 1.0


class _RunningMark:
    """An attempt's RUNNING row: written at once (`record_start`), or once the attempt has run
    MARK_RUNNING_AFTER seconds; bookkeeping, not a result, committed before the outcome."""

    __slots__ = ("_attempt", "_replay", "_step", "_write", "due", "settled")

    def __init__(self, replay: Replay, step: _Step, attempt: _Attempt, due: float) -> None:
        self._replay, self._step, self._attempt = replay, step, attempt
        self._write: asyncio.Future[None] | None = None
        self.due = due
        self.settled = False

    def start(self) -> None:
        row = self._step.row(self._attempt, "RUNNING")
        self._write = asyncio.ensure_future(self._replay.write(row))

    async def settle(self) -> None:
        """The attempt is over: no mark if none was started, else the mark committed."""
        self.settled = True
        if self._write is not None:
            await self._write


class _RunningMarks:
    """The delayed RUNNING marks of one execution's attempts, on one loop timer.

    A timer per attempt, set and canceled around each task, cost a TimerHandle, a heap push and
    Python-level heap comparisons against the canceled ones left in the loop's heap, per task.
    Every mark waits the same delay from its attempt's start, so they fall due in the order
    they were made: one timer, armed for the oldest unsettled mark, serves them all.
    """

    __slots__ = ("_pending", "_replay", "_timer")

    # A timer may fire a little before its time (the loop's clock resolution): a mark this
    # close to due is started then rather than re-arming the timer for it.
    _EARLY = 0.001

    def __init__(self, replay: Replay) -> None:
        self._replay = replay
        self._pending: deque[_RunningMark] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def mark(self, step: _Step, attempt: _Attempt) -> _RunningMark:
        """The mark of an attempt starting now: written now or after MARK_RUNNING_AFTER."""
        loop = asyncio.get_running_loop()
        mark = _RunningMark(self._replay, step, attempt, loop.time() + MARK_RUNNING_AFTER)
        if step.record_start:
            mark.start()
            return mark
        pending = self._pending
        while pending and pending[0].settled:  # attempts done before their mark was due
            pending.popleft()
        pending.append(mark)
        if self._timer is None:
            self._timer = loop.call_at(mark.due, self._fire)
        return mark

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + self._EARLY
        pending = self._pending
        while pending and (pending[0].settled or pending[0].due <= now):
            mark = pending.popleft()
            if not mark.settled:
                mark.start()
        if pending:
            self._timer = loop.call_at(pending[0].due, self._fire)


def _encoder(encode: Encoder | None, name: str, key: str, where: str) -> Encoder:
    if encode is None:
        return _EngineEncoder(name, key)
    if isinstance(encode, _EngineEncoder):
        return encode
    return _checked(encode, f"{where} output")
