"""Keeps the API key out of the task log: every string recorded by the integration goes through
`scrub`, which replaces the key wherever it appears (params, outputs, error messages)."""

from __future__ import annotations

from typing import Any

REDACTED = "[REDACTED]"
# Shorter "keys" (test placeholders such as "test") would mangle ordinary text if scrubbed.
MIN_SECRET_LENGTH = 8


def scrub(value: Any, secret: str | None) -> Any:
    """`value` (JSON) with every occurrence of `secret` replaced by "[REDACTED]"."""
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        return value
    return _scrub(value, secret)


def _scrub(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace(secret, REDACTED) if secret in value else value
    if isinstance(value, list):
        return [_scrub(v, secret) for v in value]
    if isinstance(value, dict):
        return {_scrub(k, secret): _scrub(v, secret) for k, v in value.items()}
    return value
