"""A stateful fake of the OpenAI HTTP API for tests.

It serves the endpoints the engine's OpenAI integration uses (files, assistants, threads,
messages, runs, chat completions, embeddings, images, models and responses) on a loopback port,
so the real ``openai.OpenAI``/``openai.AsyncOpenAI`` client can be pointed at it with
``base_url=fake.base_url``. Runs, file processing and background responses advance with time;
every request is recorded; faults (429/500/400...) can be injected per route; ``fake.hold(kind)``
keeps runs, files or background responses in progress until ``fake.release(kind)``.

    with fake_openai_server(run_seconds=0.1) as fake:
        client = openai.OpenAI(base_url=fake.base_url, api_key="test")
        ...
        assert fake.count("POST /v1/threads/{thread_id}/runs") == 1
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .faults import FakeError, Fault, RecordedRequest
from .process import FakeOpenAIProcess
from .server import FakeOpenAI


@contextmanager
def fake_openai_server(**kwargs: Any) -> Iterator[FakeOpenAI]:
    """Start a :class:`FakeOpenAI` (keyword arguments as its constructor) and stop it after."""
    fake = FakeOpenAI(**kwargs)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


__all__ = [
    "FakeError",
    "FakeOpenAI",
    "FakeOpenAIProcess",
    "Fault",
    "RecordedRequest",
    "fake_openai_server",
]
