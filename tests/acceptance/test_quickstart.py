"""The README's main command, as a new user runs it: the seed's data visualizer end to end on
the SQLite default, offline against the bundled fake OpenAI when no key is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "data_visualizer.py"

pytestmark = pytest.mark.slow


def test_the_data_visualizer_runs_end_to_end_offline(tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ENGINE_DATABASE_URL")
    }
    # As after the README's one-liner, which never activates the venv: its bin/ is not on PATH
    # (also when the suite itself runs in an activated venv).
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir)
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "running OFFLINE against the local fake OpenAI server" in out
    assert "COMPLETED" in out
    for key in ("upload-file", "create-assistant", "create-thread", "list-messages"):
        assert key in out
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "engine.db").exists()

    # The command it suggests works as printed, without the venv's bin/ on PATH (the README's
    # one-liner never activates the venv).
    hint = out.strip().splitlines()[-1]
    assert hint.startswith("inspect it again with: "), out
    command = hint.removeprefix("inspect it again with: ")
    run_id = command.split()[-1]
    shown = subprocess.run(
        command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, f"$ {command}\n{shown.stdout}{shown.stderr}"
    assert run_id in shown.stdout and "COMPLETED" in shown.stdout
