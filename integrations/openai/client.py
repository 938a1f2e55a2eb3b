"""`OpenAI`: the integration object a job declares, `@job(integrations={"openai": OpenAI()})`.

It owns the openai-python client (created on first use, one per event loop, with the client's
own retries off: the engine retries, as recorded attempts), the retry policy, the poll schedule
of the waiting methods, and the pollers the scheduler calls while a run waits.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import openai

from engine import IO, EngineError, RateLimit, RetryPolicy
from engine import pollers as engine_pollers
from engine import secrets as engine_secrets

from . import limits as rate_limits
from .calls import Caller
from .errors import MissingAPIKeyError
from .pollers import make_pollers
from .resources import OpenAIIO
from .usage import hooks, install

DEFAULT_RETRY = RetryPolicy(max_attempts=5, min_delay=1.0, max_delay=60.0, factor=2.0)
DEFAULT_POLL_INTERVAL = 0.5
DEFAULT_MAX_POLL_INTERVAL = 10.0
DEFAULT_POLL_TIMEOUT = 3600.0
POLL_BACKOFF = 1.5
# A 429 waits for the reset OpenAI's headers give, however long, up to this (then tries again).
DEFAULT_MAX_RATE_LIMIT_WAIT = 15 * 60.0
MAX_RATE_LIMIT_WAIT_CAP = 24 * 3600.0
# Attempts a task may spend on 429s beyond retry.max_attempts.
DEFAULT_MAX_RATE_LIMIT_RETRIES = 20
MAX_RATE_LIMIT_RETRIES_CAP = 95


class OpenAI:
    """The OpenAI integration: `io.openai.<path>(key, *ids, **params)` in a job.

    `api_key`, `base_url` and `organization` default to what `openai.AsyncOpenAI` reads from the
    environment (OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_ORG_ID); `client=` uses a client you
    built (its retries are turned off). Waiting methods poll every `poll_interval` seconds,
    growing by 1.5x up to `max_poll_interval`, and give up after `poll_timeout`.

    A rate-limited call (429) waits, suspended, for the reset OpenAI's headers give (at most
    `max_rate_limit_wait` seconds per wait) and may be retried `max_rate_limit_retries` times
    beyond `retry.max_attempts`; errors no retry can fix (`insufficient_quota`, a refused key,
    400/401/403/404) fail the task at once.

    `limits=RateLimit(requests=500, tokens=200_000, per="minute")` holds every call under a
    limit shared by every worker (or one per model: `limits={"gpt-4o": RateLimit(...), "*":
    RateLimit(...)}`); a call over it waits, suspended, until there is room (integrations.
    openai.limits).
    """

    def __init__(
        self,
        id: str = "openai",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        client: openai.AsyncOpenAI | None = None,
        organization: str | None = None,
        project: str | None = None,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        poll_timeout: float = DEFAULT_POLL_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_rate_limit_wait: float = DEFAULT_MAX_RATE_LIMIT_WAIT,
        max_rate_limit_retries: int = DEFAULT_MAX_RATE_LIMIT_RETRIES,
        limits: RateLimit | Mapping[str, RateLimit] | None = None,
    ) -> None:
        if not id or not isinstance(id, str) or ":" in id:
            raise EngineError(f"OpenAI(id={id!r}): give a non-empty id without ':'")
        if not isinstance(retry, RetryPolicy):
            raise EngineError(f"OpenAI(retry={retry!r}): pass an engine.RetryPolicy")
        self.poll_schedule = engine_pollers.PollSchedule(
            poll_interval, max_poll_interval, POLL_BACKOFF, poll_timeout
        )
        _check_rate_limit_options(max_rate_limit_wait, max_rate_limit_retries)
        self.id = id
        self.limits = rate_limits.check(limits)
        self.retry = retry
        self.max_rate_limit_wait = float(max_rate_limit_wait)
        self.max_rate_limit_retries = max_rate_limit_retries
        self._api_key = api_key
        self._options: dict[str, Any] = {
            k: v
            for k, v in {
                "base_url": base_url,
                "organization": organization,
                "project": project,
                "timeout": timeout,
            }.items()
            if v is not None
        }
        self._given = client.with_options(max_retries=0) if client is not None else None
        if self._given is not None:
            # Its httpx client's hooks read rate-limit headers and hold back late requests.
            install(getattr(self._given, "_client", None))
        self._clients: dict[int, tuple[asyncio.AbstractEventLoop, openai.AsyncOpenAI]] = {}

    def __repr__(self) -> str:
        return f"OpenAI(id={self.id!r})"

    # -- the client ----------------------------------------------------------------------------

    def secret(self) -> str | None:
        """The API key calls will use (scrubbed from everything recorded).

        Registered with the engine once resolved, so it is scrubbed from what user code records
        or logs too (errors, log lines), not only from this integration's own records.
        """
        if self._given is not None:
            given = self._given.api_key
            key: str | None = given if isinstance(given, str) else None
        else:
            key = self._api_key or os.environ.get("OPENAI_API_KEY") or None
        engine_secrets.register(key)
        return key

    def client(self) -> openai.AsyncOpenAI:
        """The openai client for the running event loop, created on first use."""
        if self._given is not None:
            return self._given
        loop = asyncio.get_running_loop()
        found = self._clients.get(id(loop))
        if found is not None and found[0] is loop:
            return found[1]
        key = self.secret()
        if not key:
            raise MissingAPIKeyError(self.id)
        http_client = openai.DefaultAsyncHttpxClient(event_hooks=hooks())
        created = openai.AsyncOpenAI(
            api_key=key, max_retries=0, http_client=http_client, **self._options
        )
        self._clients = {i: c for i, c in self._clients.items() if not c[0].is_closed()}
        self._clients[id(loop)] = (loop, created)
        return created

    async def aclose(self) -> None:
        """Closes the clients this integration created (not one passed as `client=`)."""
        clients, self._clients = self._clients, {}
        for loop, created in clients.values():
            if loop is asyncio.get_running_loop():
                await created.close()

    # -- the Integration protocol --------------------------------------------------------------

    def bind(self, io: IO) -> OpenAIIO:
        """`io.openai` (or `io.use(openai)`, typed) for one execution of a run."""
        return OpenAIIO(Caller(self, io))

    def poller_name(self, what: str) -> str:
        return f"openai:{self.id}:{what}"

    def register_pollers(self) -> None:
        """Registers `openai:<id>:file`, `openai:<id>:run` and `openai:<id>:response`."""
        self.secret()  # a worker starts: the engine scrubs the key from then on
        for what, poller in make_pollers(self).items():
            engine_pollers.register(self.poller_name(what), poller)


def _check_rate_limit_options(wait: object, retries: object) -> None:
    if (
        isinstance(wait, bool)
        or not isinstance(wait, int | float)
        or not 0 < wait <= MAX_RATE_LIMIT_WAIT_CAP
    ):
        raise EngineError(
            f"OpenAI(max_rate_limit_wait={wait!r}): give seconds, more than 0 and at most "
            f"{MAX_RATE_LIMIT_WAIT_CAP:.0f}"
        )
    if (
        isinstance(retries, bool)
        or not isinstance(retries, int)
        or not 0 <= retries <= MAX_RATE_LIMIT_RETRIES_CAP
    ):
        raise EngineError(
            f"OpenAI(max_rate_limit_retries={retries!r}): give an integer from 0 to "
            f"{MAX_RATE_LIMIT_RETRIES_CAP}"
        )
