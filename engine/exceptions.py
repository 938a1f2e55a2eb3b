"""Every error the engine raises on purpose.

`EngineError` is the root; a subclass's docstring is its default message, and each message says
what was wrong and what to do about it. Control-flow signals (suspension, lost leases) are *not*
`Exception`s, so a job's own `except Exception` cannot swallow them.
"""

from __future__ import annotations

from typing import Any


class EngineError(Exception):
    """The engine could not do what was asked."""

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or "").strip()
        self.details = details
        super().__init__(self.message)


class UnknownJobError(EngineError):
    """No job with this id is registered: run `engine run APP` once, or pass `--app APP`."""


class PayloadValidationError(EngineError):
    """The payload does not match the job's payload schema."""


class AppLoadError(EngineError):
    """The app could not be imported: pass a module path (`pkg.jobs`) or a `.py` file."""


class DatabaseError(EngineError):
    """The database could not be reached or used."""

    def __init__(
        self, message: str | None = None, *, transient: bool = False, **details: Any
    ) -> None:
        super().__init__(message, **details)
        # True: the database was unreachable, locked or full, and the same write may succeed
        # later (see engine.dberrors); False: it refused this write and always will.
        self.transient = transient


class WriteRefusedError(EngineError):
    """The database refused to record a step's outcome: the step is not run again for it."""


class RunNotFoundError(EngineError):
    """No run has this id: `engine runs list` shows the runs there are."""


class InvalidRunStateError(EngineError):
    """The run is not in a state that allows this."""


class DuplicateKeyError(EngineError):
    """A key was used twice among sibling steps of one run: give each step its own key."""


class NotSerializableError(EngineError):
    """A value cannot be stored in the task log: return JSON-compatible data or a pydantic model."""


class DivergenceError(EngineError):
    """The job's code no longer matches what this run recorded."""


class TaskError(EngineError):
    """A task failed; this stands in for an exception type that could not be rebuilt on replay."""

    def __init__(self, message: str | None = None, *, type: str = "", **details: Any) -> None:
        super().__init__(message, type=type, **details)
        self.type = type


class PollTimeoutError(EngineError):
    """A background poll did not finish before its timeout."""


class TaskTimeoutError(EngineError):
    """A task attempt ran longer than its `timeout=`."""


class RecoveryLimitError(EngineError):
    """The run lost too many executions (lease lapsed, worker gone): `engine runs retry` resumes
    it."""


class RunTimeoutError(EngineError):
    """The run was still unfinished at its deadline (`@job(timeout=)`, `--timeout`): canceled."""


class UnknownVersionError(EngineError):
    """No such version of this job is registered: `engine jobs list` shows the versions."""


class ChildRunError(EngineError):
    """A child run started by `io.invoke` did not complete: `run_id` names it, `job_id` its
    job, `status` is FAILED or CANCELED, and `error` is its recorded error ({"type",
    "message", "module"}; None for a cancel). `engine runs show RUN_ID` shows the rest."""

    run_id: str
    job_id: str
    status: str
    error: dict[str, Any] | None


class ControlFlow(BaseException):
    """Base of the engine's control-flow signals: they pass through `except Exception`."""


class Suspend(ControlFlow):
    """Unloads the run: it waits for a due time or a poll and is resumed by the scheduler."""


class LeaseLost(ControlFlow):
    """Another execution owns this run now (lease expired, run canceled): stop at once."""


class WriteFailed(ControlFlow):
    """The database refused a step's write: this execution stops, nothing after it runs, and
    the run is picked up again once its lease lapses."""
