"""The secrets the engine knows (integration API keys, the database password), and `scrub`,
which replaces each of them with "[REDACTED]" wherever it appears.

Everything the engine records or logs about a failure goes through `scrub`: recorded errors
(message and traceback), `io.logger` lines, and the engine's own Python logging (a filter on
the `engine` loggers). So a key that leaks into an exception raised by user code is not stored
(INVARIANTS 8). Strings shorter than MIN_SECRET_LENGTH are not registered: test placeholders
such as "test" would mangle ordinary text.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

REDACTED = "[REDACTED]"
MIN_SECRET_LENGTH = 8

_lock = threading.Lock()
# Longest first, so a secret that contains another is replaced whole.
_secrets: tuple[str, ...] = ()


def register(secret: str | None) -> None:
    """Remembers `secret` for the life of the process; short or empty strings are ignored."""
    global _secrets
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH or secret in _secrets:
        return
    with _lock:
        _secrets = tuple(sorted({*_secrets, secret}, key=len, reverse=True))


def scrub(value: Any) -> Any:
    """`value` (a string, or JSON-like data: dicts, lists, tuples) with every registered secret
    replaced by "[REDACTED]"; the same object when there was nothing to replace."""
    known = _secrets
    if not known:
        return value
    return _scrub(value, known)


def appears_in(text: str) -> bool:
    """Whether a registered secret appears in `text` (a cheap test before `scrub`)."""
    return any(secret in text for secret in _secrets)


def _scrub(value: Any, known: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        for secret in known:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {_scrub(k, known): _scrub(v, known) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, known) for v in value]
    if isinstance(value, tuple):
        return tuple(_scrub(v, known) for v in value)
    return value


class ScrubFilter(logging.Filter):
    """Scrubs a log record's formatted message and exception text before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when it emits the record
            return True
        scrubbed = scrub(message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:  # formatters use exc_text as it is once it is set
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        return True


_filter = ScrubFilter()


def install_log_filter(*targets: logging.Logger | logging.Handler) -> None:
    """Adds the scrubbing filter to every `engine` logger (and to `targets`, e.g. the handlers
    of `engine run`); idempotent. Filters are not inherited by child loggers: called again
    when a worker starts, it covers the engine loggers created since."""
    loggers: list[logging.Logger | logging.Handler] = [logging.getLogger("engine")]
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("engine.") and isinstance(logger, logging.Logger):
            loggers.append(logger)
    for target in (*loggers, *targets):
        if _filter not in target.filters:
            target.addFilter(_filter)


for _name in ("engine.worker", "engine.scheduler", "engine.executor", "engine.job"):
    logging.getLogger(_name)
install_log_filter()
