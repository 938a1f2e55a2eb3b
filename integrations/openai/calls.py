"""The two shapes every `io.openai` method takes: one request as a task, or one wait as a poll.

A request is `io.call(key, ..., kind="openai", name=<method path>, record_start=True)`: its
params are recorded before it is sent, every POST carries `Idempotency-Key: <task idempotency
key>` (the same on every attempt), and its response is recorded and rebuilt by `codec`. A wait is
`io.poll(key, "openai:<id>:<what>", ids)`: the scheduler retrieves the object on a backing-off
schedule while the run is unloaded.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import openai
from pydantic import BaseModel

from engine import EngineError, RetryPolicy, Task

from . import codec, streaming, usage
from . import limits as rate_limits
from . import params as P
from .errors import MissingAPIKeyError, OpenAIAPIError, translate
from .secrets import scrub

if TYPE_CHECKING:
    from .client import OpenAI

# `list_all` reads at most this many pages (100 items each at most): 100,000 items.
MAX_PAGES = 1000


def quietly(fn: Callable[..., Any], **kwargs: Any) -> Any:
    """Calls an openai method without its Assistants-API DeprecationWarning.

    The warning is raised when the (synchronous) wrapper creates the coroutine, so only that
    call is wrapped: `catch_warnings` around an `await` would race with other tasks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return fn(**kwargs)


def method_of(client: openai.AsyncOpenAI, path: str) -> Callable[..., Any]:
    obj: Any = client
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


class Caller:
    """What the method namespaces share: the integration, the run's `io`, and the two shapes."""

    def __init__(self, integration: OpenAI, io: Any) -> None:
        self.integration = integration
        self.io = io

    async def request(
        self,
        key: str,
        operation: str,
        ids: dict[str, str],
        params: dict[str, Any],
        *,
        post: bool,
        sent: dict[str, Any] | None = None,
        method: str | None = None,
        paginate: bool | str = False,
        recorded: dict[str, Any] | None = None,
    ) -> Any:
        """One API call as one task. `params` are recorded, `sent` (default: `params`) sent.

        `retry=RetryPolicy(...)` among the params is this call's policy (the integration's
        otherwise): it is neither sent nor recorded."""
        policy = params.pop("retry", None)
        if sent is not None:
            sent = {k: v for k, v in sent.items() if k != "retry"}
        if recorded is not None:
            recorded = {k: v for k, v in recorded.items() if k != "retry"}
        if policy is not None and not isinstance(policy, RetryPolicy):
            raise EngineError(
                f"io.openai.{operation}({key!r}, retry={policy!r}): pass an engine.RetryPolicy"
            )
        stream_to = self._stream_to(key, operation, params)
        integration = self.integration
        secret = integration.secret()
        if secret is None and not self.io.is_recorded(key):
            # Refused before anything is written (a replay of a recorded call needs no key).
            raise MissingAPIKeyError(integration.id)
        record = recorded if recorded is not None else P.record(ids, params, secret)
        payload = dict(sent if sent is not None else params)
        if stream_to is not None:
            streaming.prepare(operation, payload)
            record = {**record, "stream_to": stream_to}
        path = method or operation
        where = f"io.openai.{operation}({key!r})"

        seen: dict[str, str] = {}
        charge = rate_limits.charge_for(integration.id, integration.limits, payload)

        async def fn(task: Task) -> Any:
            client = integration.client()
            kwargs = {**ids, **payload}
            for name, value in kwargs.items():
                if isinstance(value, P.Upload):
                    kwargs[name] = value.to_send()
            if post:
                headers = dict(kwargs.get("extra_headers") or {})
                # A key the caller chose wins (as in Trigger.dev v2); else the task's, the same
                # on every attempt.
                if not any(name.lower() == "idempotency-key" for name in headers):
                    headers["Idempotency-Key"] = task.idempotency_key
                kwargs["extra_headers"] = headers
            try:
                with usage.capturing() as headers:
                    if stream_to is not None:
                        found = await streaming.consume(
                            operation,
                            await method_of(client, path)(**kwargs),
                            partial(self.io.stream.write, stream_to),
                        )
                    elif paginate:
                        found = await _all_pages(
                            method_of(client, path), kwargs, as_page=paginate == "page"
                        )
                    else:
                        found = await quietly(method_of(client, path), **kwargs)
                    seen.clear()
                    seen.update(headers)
                if charge is not None:
                    await rate_limits.settle(charge, found, headers, payload)
                return found
            except openai.OpenAIError as exc:
                if charge is not None:
                    await rate_limits.settle(charge, None, headers, payload)
                error = translate(exc, operation, secret)
                if error.status_code == 429 and error.retryable:
                    error.max_retry_after = integration.max_rate_limit_wait
                    error.extra_attempts = integration.max_rate_limit_retries
                raise error from None
            except EngineError:
                raise
            except Exception as exc:  # a bad argument: sending it again cannot help
                message = scrub(f"{operation}: {type(exc).__name__}: {exc}", secret)
                raise OpenAIAPIError(message, retryable=False, operation=operation) from None

        def encode(value: Any) -> tuple[Any, str | None]:
            return codec.encode(value, secret, where)

        return await self.io.call(
            key,
            fn,
            kind="openai",
            name=operation,
            params=record,
            retry=policy or integration.retry,
            encode=encode,
            decode=codec.decode,
            record_start=True,
            usage=lambda value: usage.of_call(operation, value, seen, payload),
            rate_limit=charge,
        )

    def _stream_to(self, key: str, operation: str, params: dict[str, Any]) -> str | None:
        """The run's stream a `stream=True` call forwards its chunks to (`stream_to=`, else the
        call's key), or None for a call that does not stream. Neither is sent."""
        stream_to = params.pop("stream_to", None)
        if not params.get("stream"):
            params.pop("stream", None)
            if stream_to is not None:
                raise EngineError(
                    f"io.openai.{operation}({key!r}, stream_to={stream_to!r}): stream_to= names "
                    "where a streamed call's chunks go: pass stream=True with it"
                )
            return None
        if operation not in streaming.STREAMABLE:
            raise EngineError(
                f"io.openai.{operation}({key!r}, stream=True): only "
                f"{' and '.join(sorted(streaming.STREAMABLE))} stream; call this one without "
                "stream= (the whole response is recorded)"
            )
        name: str = self.io.stream.check_name(stream_to if stream_to is not None else key)
        return name

    async def wait(
        self,
        key: str,
        operation: str,
        what: str,
        ids: dict[str, str],
        cls: type[BaseModel],
        timeout: float | None = None,
        *,
        current: BaseModel | None = None,
        done: frozenset[str] = frozenset(),
        poll_interval: float | None = None,
        max_poll_interval: float | None = None,
        poll_backoff: float | None = None,
    ) -> Any:
        """A persisted wait until the object reaches a terminal status; returns it as `cls`.

        `current` is the object as its create returned it: when that is already in a `done`
        status, the wait is recorded as finished at once, without a poll interval's delay."""
        integration = self.integration
        schedule = integration.poll_schedule
        if current is not None and getattr(current, "status", None) in done:
            return await self._finished(key, operation, ids, current)
        value = await self.io.poll(
            key,
            integration.poller_name(what),
            ids,
            name=operation,
            kind="openai",
            interval=poll_interval or schedule.interval,
            max_interval=max_poll_interval or max(schedule.max_interval, poll_interval or 0.0),
            backoff=poll_backoff or schedule.backoff,
            timeout=timeout or schedule.timeout,
        )
        return codec.build(value, cls)

    async def _finished(
        self, key: str, operation: str, ids: dict[str, str], current: BaseModel
    ) -> Any:
        """The wait under `key`, recorded as done with the object its create returned."""
        secret = self.integration.secret()
        where = f"io.openai.{operation}({key!r})"

        async def already(task: Task) -> Any:
            return current

        return await self.io.call(
            key,
            already,
            kind="openai",
            name=operation,
            params=ids,
            encode=lambda value: codec.encode(value, secret, where),
            decode=codec.decode,
        )


async def _all_pages(
    method: Callable[..., Any], kwargs: dict[str, Any], *, as_page: bool = False
) -> Any:
    """Every item of every page; `as_page`: as the first page holding them all."""
    first = page = await quietly(method, **kwargs)
    items = list(page.data)
    pages = 1
    while page.has_next_page():
        if pages >= MAX_PAGES:
            raise OpenAIAPIError(
                f"list_all stopped after {MAX_PAGES} pages: use list(..., after=...) to page "
                "through this many items",
                retryable=False,
            )
        page = await page.get_next_page()
        items.extend(page.data)
        pages += 1
    if as_page:
        first.data = items
        if hasattr(first, "has_more"):
            first.has_more = False
        return first
    return items
