"""The pollers behind the waiting methods, called by the scheduler while a run is unloaded.

Each retrieves one object (a file, an assistant run, a background response) and is done when
its status is terminal. Rate limits, server errors and connection errors mean "not yet" (the
next poll comes on schedule, until the wait's timeout); any other API error (404, 400, a
missing key) ends the wait with that error recorded. Params hold ids only: the client (and its
key) come from the integration object.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import openai

from engine import PollResult
from engine.serialization import encode_error

from . import usage
from .calls import method_of, quietly
from .errors import OpenAIAPIError, translate
from .secrets import scrub

if TYPE_CHECKING:
    from .client import OpenAI

# `deleted` too: a file removed while it was processed will never be processed (Trigger.dev v2
# stopped on it as well).
FILE_DONE = frozenset({"processed", "error", "deleted"})
RUN_DONE = frozenset(
    {"completed", "failed", "cancelled", "expired", "incomplete", "requires_action"}
)
RESPONSE_DONE = frozenset({"completed", "failed", "cancelled", "incomplete"})
FINE_TUNE_DONE = frozenset({"succeeded", "failed", "cancelled"})

Poller = Callable[[dict[str, Any]], Awaitable[PollResult]]

# what -> (client method, {poll param: method argument}, terminal statuses)
_TARGETS: dict[str, tuple[str, dict[str, str], frozenset[str]]] = {
    "file": ("files.retrieve", {"file_id": "file_id"}, FILE_DONE),
    "run": ("beta.threads.runs.retrieve", {"thread_id": "thread_id", "run_id": "run_id"}, RUN_DONE),
    "response": ("responses.retrieve", {"response_id": "response_id"}, RESPONSE_DONE),
    "fine_tune": (
        "fine_tuning.jobs.retrieve",
        {"fine_tuning_job_id": "fine_tuning_job_id"},
        FINE_TUNE_DONE,
    ),
}


def make_pollers(integration: OpenAI) -> dict[str, Poller]:
    """One poller per kind of object, bound to `integration`'s client."""
    return {what: _poller(integration, what) for what in _TARGETS}


def _poller(integration: OpenAI, what: str) -> Poller:
    path, arguments, done = _TARGETS[what]

    async def poll(params: dict[str, Any]) -> PollResult:
        secret = integration.secret()
        try:
            kwargs = {arguments[name]: params[name] for name in arguments}
            client = integration.client()
            found = await quietly(method_of(client, path), **kwargs)
        except OpenAIAPIError as exc:
            return _failed(exc)
        except openai.OpenAIError as exc:
            error = translate(exc, f"{path} (polling)", secret)
            return PollResult(done=False) if error.retryable else _failed(error)
        except KeyError as exc:
            return _failed(OpenAIAPIError(f"{what} poll: missing param {exc}", retryable=False))
        if getattr(found, "status", None) not in done:
            return PollResult(done=False)
        value = scrub(found.model_dump(mode="json"), secret)
        return PollResult(done=True, value=value, usage=_spent(value))

    poll.__name__ = f"poll_{what}"
    return poll


def _spent(value: Any) -> dict[str, Any] | None:
    """A finished run's or response's tokens (what it was billed); None for a file."""
    try:
        return usage.tokens(value)
    except Exception:  # reading usage must never fail a wait that finished
        return None


def _failed(error: OpenAIAPIError) -> PollResult:
    return PollResult(done=True, error=encode_error(error))
