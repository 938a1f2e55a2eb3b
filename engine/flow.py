"""Flow control a job declares: its concurrency limit and its priority (docs/flow-control.md).

A limit is enforced when runs are claimed (engine.store): a run over its limit stays QUEUED and
takes no worker slot. The key of a per-key limit is computed when the run is triggered and stored
on the run row, so the claim is plain SQL and another process can read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import limits
from .exceptions import EngineError

# Priorities range over -MAX_PRIORITY..MAX_PRIORITY; each level is worth PRIORITY_STEP seconds of
# waiting, which bounds starvation: a run is overtaken only by runs of higher priority triggered
# less than (their priority - its priority) * PRIORITY_STEP seconds after it.
MAX_PRIORITY = 100
PRIORITY_STEP = 60.0
MAX_CONCURRENCY_LIMIT = 100_000
# What engine_jobs.concurrency says of a key function that only the job's code can compute.
CODE_KEY = "<code>"

KeyFunction = Callable[[Any], Any]


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` runs of the job RUNNING at once, across every worker; with `key`, at
    most `limit` per key. `key` is a function of the payload (as stored, JSON) or the name of a
    payload field ("customer_id", or a dotted path "customer.id")."""

    limit: int
    key: KeyFunction | str | None = None

    def __post_init__(self) -> None:
        check_limit(self.limit, "Concurrency(limit={})")
        if self.key is not None and not (callable(self.key) or isinstance(self.key, str)):
            raise EngineError(
                f"Concurrency(key={self.key!r}): give a function of the payload "
                "(key=lambda payload: payload['customer_id']) or a payload field name"
            )
        if isinstance(self.key, str):
            limits.check_text(self.key, "Concurrency(key=...)", 200, control=True)

    def spec(self) -> dict[str, Any]:
        """What is registered in engine_jobs.concurrency."""
        key = self.key if isinstance(self.key, str) or self.key is None else CODE_KEY
        return {"limit": self.limit, "key": key}


def as_concurrency(value: int | Concurrency | None, job_id: str) -> Concurrency | None:
    if value is None or isinstance(value, Concurrency):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineError(
            f"@job({job_id!r}, concurrency={value!r}): give a number of runs, e.g. "
            "concurrency=5, or Concurrency(limit=2, key=lambda payload: payload['customer_id'])"
        )
    return Concurrency(check_limit(value, f"@job({job_id!r}) concurrency={{}}"))


def check_limit(value: Any, what: str) -> int:
    """`what` names the argument, with `{}` where the value goes."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineError(f"{what.format(repr(value))}: give a whole number of runs, 1 or more")
    if not 1 <= value <= MAX_CONCURRENCY_LIMIT:
        raise EngineError(f"{what.format(value)}: use 1 to {MAX_CONCURRENCY_LIMIT}")
    return value


def check_priority(value: Any, what: str = "priority") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise EngineError(f"{what}={value!r}: give a whole number, e.g. priority=10")
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise EngineError(f"{what}={value}: use {-MAX_PRIORITY} to {MAX_PRIORITY}")
    return value


def key_of(
    spec: dict[str, Any] | None, job_id: str, payload: Any, code: Concurrency | None
) -> str | None:
    """The concurrency key a run of `job_id` with `payload` is stored with: None without a
    limit, "" for a job-wide limit. `code` is the job's own declaration, when this process has
    the job's code (needed for a key function)."""
    if code is not None:
        spec = code.spec()
    if not spec:
        return None
    key = spec.get("key")
    if key is None:
        return ""
    if key == CODE_KEY:
        if code is None or not callable(code.key):
            raise EngineError(
                f"job {job_id!r} has a per-key concurrency limit computed by its code: trigger "
                "it from a process that imports the job (`engine trigger --app APP`), or declare "
                "the key as a payload field name, Concurrency(limit=..., key='customer_id')"
            )
        try:
            value = code.key(payload)
        except Exception as exc:
            raise EngineError(
                f"job {job_id!r}: its concurrency key function failed on this payload "
                f"({type(exc).__name__}: {exc})"
            ) from None
    else:
        value = payload
        for part in str(key).split("."):
            if not isinstance(value, dict) or part not in value:
                raise EngineError(
                    f"job {job_id!r} limits concurrency per payload field {key!r}: this payload "
                    f'has no {key!r}; pass e.g. --payload \'{{"{part}": "..."}}\''
                )
            value = value[part]
    if value is None or isinstance(value, dict | list):
        raise EngineError(
            f"job {job_id!r}: its concurrency key is {value!r}; it must be a string or a number"
        )
    return limits.check_text(str(value), f"job {job_id!r} concurrency key", 300)
