"""Helpers for the OpenAI benchmarks: the fake OpenAI server in a separate process.

The fake (`python -m integrations.openai.testing --port 0`) runs in its own process so that its
request handling does not share the benchmark's (or the worker's) event loop and GIL. It prints
`fake OpenAI listening on http://HOST:PORT/v1` once ready; its request log (with the time each
request arrived, `at`) is read back through `GET /_fake/stats`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from typing import Any

import common

API_KEY = "sk-bench-fake-key"


class FakeServer:
    """`python -m integrations.openai.testing` as a subprocess; `stop()` ends it."""

    def __init__(self, proc: asyncio.subprocess.Process, base_url: str) -> None:
        self.proc = proc
        self.base_url = base_url

    @property
    def root(self) -> str:
        return self.base_url.rsplit("/v1", 1)[0]

    @classmethod
    async def start(cls, **options: float) -> FakeServer:
        argv = [sys.executable, "-m", "integrations.openai.testing", "--port", "0"]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=str(common.ROOT), stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError("the fake OpenAI server did not start within 30 s") from None
        line = raw.decode().strip()
        if "listening on " not in line:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"the fake OpenAI server did not start: {line!r}")
        return cls(proc, line.rsplit("listening on ", 1)[1].strip())

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def _admin(self, method: str, path: str) -> Any:
        data = b"{}" if method == "POST" else None
        request = urllib.request.Request(f"{self.root}/_fake/{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    async def requests(self) -> list[dict[str, Any]]:
        """Every request the fake received (method, path, route, at, ...), oldest first."""
        stats = await asyncio.to_thread(self._admin, "GET", "stats")
        return list(stats["requests"])

    async def reset(self) -> None:
        """Forgets every object and recorded request."""
        await asyncio.to_thread(self._admin, "POST", "reset")

    def pid_cpu_seconds(self) -> float:
        """User + system CPU seconds the fake has used so far (from /proc)."""
        return cpu_seconds(self.proc.pid)


def cpu_seconds(pid: int | str = "self") -> float:
    import os

    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
