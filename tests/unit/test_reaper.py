"""A test session killed with SIGTERM (CI's `timeout`) leaves no process behind: a process a
test started in its own session (as the acceptance tests start `engine`) is killed too, from
an xdist worker as well (tests/reaper.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]

CONFTEST = """
import reaper


def pytest_configure(config):
    reaper.install()
"""

SPAWNS = """
import os
import subprocess
import time


def test_spawns_then_hangs():
    child = subprocess.Popen(["sleep", "600"], start_new_session=True)
    with open(os.environ["CHILD_PID_FILE"] + ".tmp", "w") as out:
        out.write(str(child.pid))
    os.rename(os.environ["CHILD_PID_FILE"] + ".tmp", os.environ["CHILD_PID_FILE"])
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (not gone, not a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("workers", ["0", "1"])
def test_sigterm_to_the_session_kills_what_the_tests_started(tmp_path: Path, workers: str) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_spawns.py").write_text(textwrap.dedent(SPAWNS))
    pid_file = tmp_path / "child.pid"
    env = {**os.environ, "PYTHONPATH": str(TESTS), "CHILD_PID_FILE": str(pid_file)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", workers]
    # Its own group, as `timeout` runs it: the SIGTERM goes to the whole group.
    session = subprocess.Popen(
        [*cmd, "test_spawns.py"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    child = 0
    try:
        _wait(lambda: pid_file.exists() or session.poll() is not None, 120, "the test's child")
        assert session.poll() is None, session.communicate()[0]
        child = int(pid_file.read_text())
        assert _alive(child)
        os.killpg(session.pid, signal.SIGTERM)
        session.communicate(timeout=60)
        _wait(lambda: not _alive(child), 30, f"the test's child {child} to be killed")
    finally:
        with contextlib.suppress(OSError):
            os.killpg(session.pid, signal.SIGKILL)
        if child:
            with contextlib.suppress(OSError):
                os.killpg(child, signal.SIGKILL)
        session.communicate()
