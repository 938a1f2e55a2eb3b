"""The tests' `engine` processes (tests/forked.py): forks of one pre-imported Python that behave
as the real program would, to the test that started them and to a `kill -9`."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import forked
import pytest

APP = Path(__file__).parents[2] / "acceptance" / "apps" / "basic.py"


@pytest.fixture(autouse=True)
def server() -> forked.Server:
    found = forked.server()
    if found is None:
        pytest.skip("no fork server here (ENGINE_TEST_FORK=0, or no socket.send_fds)")
    return found


def test_a_command_runs_as_a_fork_with_its_output_exit_status_and_stdin(
    tmp_path: Path, server: forked.Server
) -> None:
    version = forked.run([forked.ENGINE, "--version"], cwd=tmp_path, text=True, timeout=60)
    assert (version.returncode, version.stderr) == (0, "")
    assert version.stdout.startswith("engine, version ")
    # stdin reaches the command (`--payload -`), and a failure is its own exit status and line.
    db = f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"
    refused = forked.run(
        [forked.ENGINE, "trigger", "nope", "--payload", "-", "--database-url", db],
        cwd=tmp_path,
        input="{}",
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1, refused
    assert refused.stderr.startswith("error: "), refused
    assert not (tmp_path / "e.db").exists()  # a failing trigger writes nothing, forked or not
    assert "engine --version" in server.log.read_text()  # it was a fork, not the real program


def test_kill_9_of_a_forked_worker_kills_the_worker_itself(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'e.db'}"
    worker = forked.spawn(
        [forked.ENGINE, "run", str(APP), "--database-url", db],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert isinstance(worker, forked.Forked)
    assert worker.stdout is not None
    assert worker.stdout.readline().startswith("engine worker ")
    # `pid` is the worker's own, leading its own session: what the crash tests kill.
    assert os.getsid(worker.pid) == worker.pid
    assert worker.poll() is None
    os.killpg(worker.pid, signal.SIGKILL)
    assert worker.wait(30) == -signal.SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(worker.pid, 0)
    worker.stdout.close()


def test_an_environment_the_server_did_not_start_with_runs_the_real_program(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONHASHSEED": "7"}  # read once, at start-up: a fork cannot honour it
    proc = forked.spawn([forked.ENGINE, "--version"], cwd=tmp_path, env=env)
    assert isinstance(proc, subprocess.Popen)
    assert proc.wait(60) == 0
