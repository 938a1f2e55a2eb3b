"""engine.secrets: what is registered is scrubbed from values and from the engine's logging."""

from __future__ import annotations

import logging
import uuid

import pytest

from engine import secrets
from engine.secrets import REDACTED


def test_scrub_replaces_every_registered_secret_in_nested_data() -> None:
    key = f"sk-{uuid.uuid4().hex}"
    secrets.register(key)
    secrets.register("short")  # placeholders under 8 characters would mangle text
    value = {"a": f"x{key}y", key: [1, (f"{key}", None)], "short": "short"}
    assert secrets.scrub(value) == {
        "a": f"x{REDACTED}y",
        REDACTED: [1, (REDACTED, None)],
        "short": "short",
    }
    assert secrets.scrub(3) == 3


def test_engine_log_records_are_scrubbed_message_and_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = f"sk-{uuid.uuid4().hex}"
    secrets.register(key)
    secrets.install_log_filter()
    caplog.set_level(logging.INFO, logger="engine")
    log = logging.getLogger("engine.executor")
    try:
        raise RuntimeError(f"bad key {key}")
    except RuntimeError:
        log.exception("failed with %s", key)
    assert "bad key" in caplog.text and "failed with" in caplog.text
    assert key not in caplog.text
