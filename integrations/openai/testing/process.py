"""The fake OpenAI server in a process of its own, steered over its ``/_fake/`` admin routes.

Tests that kill workers with ``kill -9`` run the fake in a separate process so that it outlives
them and counts every request they sent:

    with FakeOpenAIProcess(run_seconds=3) as fake:
        fake.hold("runs")            # created runs stay in_progress until released
        ...                          # trigger, kill -9, restart
        fake.release("runs")
        assert fake.count("POST /v1/threads/runs") == 1
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from typing import Any


class FakeOpenAIProcess:
    """``python -m integrations.openai.testing`` in its own session; killed on :meth:`close`."""

    def __init__(
        self,
        *,
        run_seconds: float = 0.2,
        file_seconds: float = 0.1,
        response_seconds: float = 0.2,
        start_timeout: float = 30.0,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        latency: float = 0.0,
    ) -> None:
        limits = [
            f"--{name}={value}"
            for name, value in (
                ("requests-per-minute", requests_per_minute),
                ("tokens-per-minute", tokens_per_minute),
            )
            if value is not None
        ]
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "integrations.openai.testing",
                "--port",
                "0",
                "--run-seconds",
                str(run_seconds),
                "--file-seconds",
                str(file_seconds),
                "--response-seconds",
                str(response_seconds),
                "--latency",
                str(latency),
                *limits,
            ],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            if "listening on" not in line:
                raise RuntimeError(f"the fake OpenAI server did not start: {line!r}")
        except BaseException:
            self.close()
            raise
        self.base_url = line.strip().rsplit(" ", 1)[-1]
        self.root = self.base_url.rsplit("/v1", 1)[0]

    # -- the admin routes ----------------------------------------------------------------------
    def _admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.root}/_fake/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return dict(self._admin("GET", "stats"))

    def count(self, route: str) -> int:
        """Requests received on ``route`` (as ``"POST /v1/files"``), since start or reset."""
        return int(self.stats()["by_route"].get(route, 0))

    def hold(self, kind: str) -> None:
        """Keep unfinished runs, files or background responses in progress until released
        ("streams": streamed answers pause half-way)."""
        self._admin("POST", "hold", {"kind": kind})

    def release(self, kind: str | None = None) -> None:
        self._admin("POST", "release", {} if kind is None else {"kind": kind})

    def paused_streams(self) -> int:
        """Streamed answers paused half-way right now by a hold on "streams"."""
        return int(self.stats()["paused_streams"])

    def fail_next(self, route: str, status: int = 500, times: int = 1, **options: Any) -> None:
        self._admin("POST", "faults", {"route": route, "status": status, "times": times, **options})

    def reset(self) -> None:
        self._admin("POST", "reset", {})

    def set_limits(
        self,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        burst_seconds: float | None = None,
    ) -> None:
        """The account's limits (buckets full again); `burst_seconds`: each holds that many
        seconds' worth instead of a minute's (OpenAI's limits enforced over shorter periods)."""
        body = {"requests_per_minute": requests_per_minute, "tokens_per_minute": tokens_per_minute}
        self._admin("POST", "limits", {**body, "burst_seconds": burst_seconds})

    def exhaust_quota(self, exhausted: bool = True) -> None:
        self._admin("POST", "quota", {"exhausted": exhausted})

    def set_usage(self, **usage: int | None) -> None:
        self._admin("POST", "usage", usage)

    def max_concurrent(self) -> int:
        """The most API requests the fake served at once (since start or reset)."""
        return int(self._admin("GET", "concurrency")["max_concurrent"])

    def rate_limited(self) -> int:
        """Requests the fake refused for its rate limits."""
        return int(self._admin("GET", "concurrency")["rate_limited"])

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> FakeOpenAIProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
