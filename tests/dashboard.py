"""A real `engine ui` process for tests (tests/acceptance/ui): started on a free port of
127.0.0.1 in its own session, its whole group killed by `close()`."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import forked
import httpx

ENGINE = str(Path(sys.executable).parent / "engine")
TOKEN = "ui-test-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dashboard:
    """One `engine ui` process on a free port of 127.0.0.1."""

    def __init__(self, url: str, cwd: Path, *options: str, token: str | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = token
        env = {k: v for k, v in os.environ.items() if k not in ("ENGINE_DATABASE_URL",)}
        env.pop("ENGINE_UI_TOKEN", None)
        if token:
            env["ENGINE_UI_TOKEN"] = token
        self.log_path = cwd / f"ui-{self.port}.log"
        self._log = open(self.log_path, "wb")  # closed by close()
        self.proc = forked.spawn(
            [ENGINE, "ui", "--database-url", url, "--port", str(self.port), *options],
            cwd=cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def wait_ready(self, timeout: float = 60.0) -> Dashboard:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"engine ui exited with {self.proc.returncode}:\n{self.output}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/static/app.css", timeout=2).status_code in (200, 401):
                    return self
            time.sleep(0.1)
        raise AssertionError(f"engine ui not answering after {timeout}s:\n{self.output}")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()
