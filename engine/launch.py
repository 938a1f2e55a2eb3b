"""What a new run will be, checked before anything is written: `Engine.trigger` and
`io.invoke` both start runs through `prepare`.

The version a run goes to, its payload as stored (validated against the job's payload type, or
against the schema a worker registered when this process lacks the job's code), its priority
and its concurrency key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from . import codec, flow, limits, versions
from .exceptions import EngineError, UnknownJobError, UnknownVersionError
from .records import Registration
from .store import Store


@dataclass(frozen=True)
class NewRun:
    """A run ready to be created: every value checked."""

    job_id: str
    version: str
    payload: Any
    priority: int
    # (key, limit) for a job with a concurrency limit.
    concurrency: tuple[str, int] | None
    # The job's registration when this process defines it (a trigger records it first).
    local: Registration | None
    # The job's own deadline for a run (`@job(timeout=)`), in seconds; None: none.
    timeout: float | None = None


async def prepare(
    store: Store,
    job_id: str,
    payload: Any = None,
    *,
    version: str | None = None,
    priority: int | None = None,
) -> NewRun:
    """Checks a new run of `job_id` and resolves its version; raises a clear EngineError (an
    unknown job or version, an invalid payload) and writes nothing.

    A payload that is omitted (or None) is `{}`, validated like any other. Without `version`
    the run goes to the version this process defines, else the highest one a live worker
    serves, else the highest registered one.
    """
    limits.check_text(job_id, "job id", limits.MAX_JOB_ID_LENGTH)
    if payload is None:
        payload = {}
    if priority is not None:
        flow.check_priority(priority)
    if version is not None and (not isinstance(version, str) or not version):
        raise EngineError('version: give a non-empty string, e.g. version="2"')
    # jobs brings jsonschema and pydantic: only a new run needs them, not `engine runs ...`.
    from .jobs import check_against_schema, registration, registry

    job = registry.get(job_id, version)
    local: Registration | None = None
    if job is not None:
        stored = codec.check(job.check_payload(payload), f"the payload of {job_id!r}")
        declared = local = registration(job)
        key = flow.key_of(None, job_id, stored, job.concurrency)
    else:
        # This process lacks the code of the version the run goes to: what the worker
        # registered of it (schema, priority, concurrency) decides.
        declared = await _route(store, job_id, version)
        # As JSON first: a pydantic model given as the payload is checked as its dict.
        stored = codec.check(payload, f"the payload of {job_id!r}")
        check_against_schema(job_id, stored, declared.payload_schema)
        key = flow.key_of(declared.concurrency, job_id, stored, None)
    spec = declared.concurrency  # never None when there is a key
    return NewRun(
        job_id,
        str(declared.version),
        stored,
        declared.priority if priority is None else priority,
        None if key is None or spec is None else (key, int(spec["limit"])),
        local,
        declared.timeout,
    )


async def _route(store: Store, job_id: str, pinned: str | None) -> Registration:
    """What is registered of the version a run of `job_id` goes to (see engine.versions)."""
    missing = store.missing_file()
    if missing:  # reading would create the file
        raise UnknownJobError(
            f"no job {job_id!r}: there is no engine database at {missing} yet: start a "
            "worker with `engine run APP` (it creates it and registers APP's jobs), or pass "
            "`--app APP`"
        )
    rows, workers = await store.job_versions(job_id)
    by_version = {
        row["version"]: Registration(
            job_id,
            row["version"],
            row["payload_schema"],
            row["priority"],
            row["concurrency"],
            row["on_event"],
            row["timeout"],
        )
        for row in rows
    }
    schemas = {row["version"]: row["payload_schema"] for row in rows}
    if not schemas:
        every, _ = await store.job_versions()
        close = difflib.get_close_matches(job_id, {r["job_id"] for r in every}, n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownJobError(
            f"no job {job_id!r} is registered in this database{guess}: start a worker with "
            "`engine run APP` once, or pass `--app APP` so its jobs are registered"
        )
    if pinned is None:
        served = versions.live_versions(job_id, workers)
        chosen = versions.default_version(schemas, served)
        assert chosen is not None
        return by_version[chosen]
    if pinned not in schemas:
        known = ", ".join(sorted(schemas, key=versions.version_key))
        raise UnknownVersionError(
            f"job {job_id!r} has no version {pinned!r} registered (registered: {known}): "
            "pass one of those, or start a worker with that version's code"
        )
    return by_version[pinned]
