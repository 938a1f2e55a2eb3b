"""The doc venv and its fork server (docvenv.py), once per test session (per xdist worker)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from docs.docvenv import ForkServer
from docs.session import base_env


@pytest.fixture(scope="session")
def fork_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    """The venv the blocks see, whose `engine` and `python` run as forks of one pre-imported
    Python (forkserver.py); ENGINE_DOCS_FORK=0 runs the real programs instead."""
    directory = tmp_path_factory.mktemp("forkserver")
    server = ForkServer(directory, base_env(directory / "venv"))
    try:
        yield server.start(fork=os.environ.get("ENGINE_DOCS_FORK", "1") != "0")
    finally:
        server.close()


@pytest.fixture(scope="session")
def doc_venv(fork_server: ForkServer) -> Path:
    return fork_server.venv
