"""A user's own `mypy --strict` accepts a job that uses `io.openai` (typed `Any`) and
`io.use(openai)` (typed as the integration binds it), and reports a wrong call through the latter.

mypy runs once, in a subprocess, on two small user files, against this checkout's `engine` and
`integrations` (through MYPYPATH, followed silently, as installed packages would be).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
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


# One xdist worker runs both tests, from one mypy run (`checked`).
pytestmark = pytest.mark.xdist_group("user-mypy")

FILES = {"user_job.py": USER_JOB, "wrong_calls.py": WRONG_CALLS}


@dataclass
class Checked:
    returncode: int
    output: str

    def errors(self, file: str) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith(f"{file}:")]


@pytest.fixture(scope="module")
def checked(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Checked:
    """mypy over both user files at once: one analysis of engine, openai and pydantic (the
    ~15 s a cold run costs) serves both tests. Its cache lives in pytest's cache folder where
    there is one (`.pytest_cache`), so a later session re-checks only what changed."""
    cache = getattr(request.config, "cache", None)
    cache_dir = cache.mkdir("user-mypy") if cache is not None else tmp_path_factory.mktemp("mypy")
    work = tmp_path_factory.mktemp("user")
    (work / "mypy.ini").write_text(CONFIG)
    for name, source in FILES.items():
        (work / name).write_text(textwrap.dedent(source))
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-error-summary"]
    cmd += ["--cache-dir", str(cache_dir), *FILES]
    try:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"mypy did not finish in 600 s: {exc}")
    return Checked(done.returncode, done.stdout + done.stderr)


@pytest.mark.slow
def test_a_users_strict_mypy_accepts_io_openai_and_io_use(checked: Checked) -> None:
    assert checked.errors("user_job.py") == [], checked.output
    # Nothing but the other file's two errors: no crash, no error in engine's own modules.
    assert checked.output.splitlines() == checked.errors("wrong_calls.py"), checked.output


@pytest.mark.slow
def test_a_wrong_call_through_io_use_is_reported(checked: Checked) -> None:
    assert checked.returncode == 1, checked.output
    errors = checked.errors("wrong_calls.py")
    assert len(errors) == 2, checked.output
    assert 'Argument 1 to "create" of "Completions" has incompatible type "int"' in errors[0]
    assert '"Completions" has no attribute "crate"' in errors[1]
