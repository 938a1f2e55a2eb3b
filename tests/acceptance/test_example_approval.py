"""examples/approval.py end to end, offline: the model's draft, a person's approval typed as the
example prints it (`engine events send ...`), then publication."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from engine import Engine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "approval.py"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def test_the_approval_example_waits_for_the_event_then_publishes(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ENGINE_DATABASE_URL")
    }
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:  # the process's own timeout bounds this (pytest-timeout)
            seen.append(line)
            if "approve the draft with:" in line:
                break
        command = proc.stdout.readline().strip()
        assert " events send draft.reviewed " in command, "".join(seen) + command
        approved = subprocess.run(
            shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
        )
        assert approved.returncode == 0, approved.stderr
        out, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == 0, "".join(seen) + out + err
    assert "running OFFLINE against the local fake OpenAI server" in "".join(seen)
    assert '"status": "published"' in out
    (published,) = (tmp_path / "published").iterdir()
    assert published.read_text().startswith("echo: Write a three-sentence post")

    run_id = seen[1].split()[2].rstrip(":")

    async def read() -> tuple[dict[str, tuple[str, int]], list[dict[str, Any]]]:
        async with Engine(f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}") as engine:
            shown = await engine.show_run(run_id)
            schedules = await engine.schedules()
        return {t["key"]: (t["status"], t["attempts"]) for t in shown["tasks"]}, schedules

    tasks, schedules = asyncio.run(read())
    # The example's weekday schedule was registered by its worker: 09:00 Paris, Monday-Friday.
    (weekday,) = schedules
    assert (weekday["job_id"], weekday["expression"], weekday["timezone"]) == (
        "weekday-draft",
        "0 9 * * 1-5",
        "Europe/Paris",
    )
    for fire in weekday["next_fire_times"]:
        local = datetime.fromisoformat(fire).astimezone(ZoneInfo("Europe/Paris"))
        assert (local.hour, local.minute) == (9, 0) and local.weekday() < 5, fire
    assert tasks == {
        "write-draft": ("COMPLETED", 1),
        "review": ("COMPLETED", 1),
        "publish": ("COMPLETED", 1),
    }
