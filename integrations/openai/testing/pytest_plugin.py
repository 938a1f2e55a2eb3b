"""Pytest plugin providing the ``fake_openai`` fixture.

Enable it with ``pytest_plugins = ["integrations.openai.testing.pytest_plugin"]``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A running :class:`FakeOpenAI` on a free loopback port, stopped after the test."""
    fake = FakeOpenAI(run_seconds=0.2, file_seconds=0.1, response_seconds=0.2)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()
