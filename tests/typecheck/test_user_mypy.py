"""A user's own `mypy --strict` accepts a job that uses `io.openai` (typed `Any`) and
`io.use(openai)` (typed as the integration binds it), and reports a wrong call through the latter.

mypy runs in a subprocess on a small user file, against this checkout's `engine` and
`integrations` (through MYPYPATH, followed silently, as installed packages would be).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[mypy]
strict = True

[mypy-engine.*]
follow_imports = silent

[mypy-integrations.*]
follow_imports = silent
"""

USER_JOB = """
from __future__ import annotations

from typing import Any, assert_type

from openai.types.chat import ChatCompletion
from pydantic import BaseModel

from engine import IO, Context, job
from integrations.openai import OpenAI
from integrations.openai.resources import OpenAIIO

openai = OpenAI(id="openai")


class Ticket(BaseModel):
    ticket_id: int


@job(id="summarize-ticket", version="1", integrations={"openai": openai})
async def summarize(payload: Ticket, io: IO, ctx: Context) -> dict[str, Any]:
    messages = [{"role": "user", "content": f"Summarize ticket {payload.ticket_id}"}]
    by_name = await io.openai.chat.completions.create("by-name", model="gpt-4o", messages=messages)
    assert_type(io.use(openai), OpenAIIO)
    typed = await io.use(openai).chat.completions.create("typed", model="gpt-4o", messages=messages)
    assert_type(typed, ChatCompletion)
    return {"by_name": by_name.id, "typed": typed.choices[0].message.content, "run": io.run_id}
"""

WRONG_CALLS = """
from __future__ import annotations

from engine import IO, Context, job
from integrations.openai import OpenAI

openai = OpenAI(id="openai")


@job(id="wrong", integrations={"openai": openai})
async def wrong(payload: dict[str, object], io: IO, ctx: Context) -> None:
    await io.use(openai).chat.completions.create(42, model="gpt-4o")
    await io.use(openai).chat.completions.crate("k", model="gpt-4o")
"""


# One xdist worker runs both tests: the second reuses the first's mypy cache (seconds, not ~15 s).
pytestmark = pytest.mark.xdist_group("user-mypy")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module: the second run reuses the analysis of engine and openai."""
    return tmp_path_factory.mktemp("mypy_cache")


def _mypy(tmp_path: Path, cache_dir: Path, source: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "mypy.ini").write_text(CONFIG)
    (tmp_path / "user_job.py").write_text(textwrap.dedent(source))
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-error-summary"]
    cmd += ["--cache-dir", str(cache_dir), "user_job.py"]
    try:
        return subprocess.run(
            cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mypy did not finish in 600 s: {exc}")


@pytest.mark.slow
def test_a_users_strict_mypy_accepts_io_openai_and_io_use(tmp_path: Path, cache_dir: Path) -> None:
    result = _mypy(tmp_path, cache_dir, USER_JOB)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.slow
def test_a_wrong_call_through_io_use_is_reported(tmp_path: Path, cache_dir: Path) -> None:
    result = _mypy(tmp_path, cache_dir, WRONG_CALLS)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = result.stdout.strip().splitlines()
    assert len(errors) == 2, result.stdout
    assert 'Argument 1 to "create" of "Completions" has incompatible type "int"' in errors[0]
    assert '"Completions" has no attribute "crate"' in errors[1]
