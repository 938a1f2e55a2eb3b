"""The doc venv's `engine` and `python` behave as the real programs: what a command gets (argv,
environment, directory, stdin), what it gives back (stdout, stderr, exit status, its death by a
signal, its traceback), and that it dies with its shim. Each check also reads the server's log:
the command really was a fork (a silent fallback to the real program would prove nothing)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from docs.docvenv import ForkServer
from docs.session import base_env

pytestmark = [
    # One xdist worker, one server, with the doc test.
    pytest.mark.xdist_group("docs-sqlite"),
    pytest.mark.skipif(os.environ.get("ENGINE_DOCS_FORK") == "0", reason="ENGINE_DOCS_FORK=0"),
]
DEADLINE = 60.0

PROBE = """
import json, os, sys
print(json.dumps({
    "argv": sys.argv, "cwd": os.getcwd(), "greeting": os.environ.get("GREETING"),
    "path0": sys.path[0], "executable": sys.executable, "stdin": sys.stdin.read(),
    "parent": os.getppid(),
}))
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


def _run(
    server: ForkServer, argv: list[str], cwd: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(server.venv / "bin" / argv[0]), *argv[1:]],
        cwd=cwd,
        env={**base_env(server.venv), **env},
        input="from stdin\n",
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def _forked(server: ForkServer, command: str) -> bool:
    return any(line.endswith(f": {command}") for line in server.log.read_text().splitlines())


def test_a_script_gets_its_argv_env_cwd_and_stdin_and_gives_back_output_and_status(
    fork_server: ForkServer, tmp_path: Path
) -> None:
    (tmp_path / "probe.py").write_text(PROBE)
    done = _run(fork_server, ["python", "probe.py", "a b", "c"], tmp_path, GREETING="hi")
    assert done.returncode == 3, done
    seen = json.loads(done.stdout)
    assert seen["argv"] == ["probe.py", "a b", "c"]
    assert seen["cwd"] == str(tmp_path)
    assert seen["greeting"] == "hi"
    assert seen["path0"] == str(tmp_path.resolve())  # the script's directory, as in python
    assert seen["executable"] == str(fork_server.venv / "bin" / "python")
    assert seen["stdin"] == "from stdin\n"
    assert done.stderr == "to stderr\n"
    assert _forked(fork_server, "python probe.py a b c")


def test_a_module_runs_as_with_python_dash_m(fork_server: ForkServer, tmp_path: Path) -> None:
    (tmp_path / "probe_module.py").write_text(PROBE)
    done = _run(fork_server, ["python", "-m", "probe_module", "x"], tmp_path)
    assert done.returncode == 3, done
    seen = json.loads(done.stdout)
    assert seen["argv"] == [str(tmp_path / "probe_module.py"), "x"]
    assert seen["path0"] == str(tmp_path)
    assert _forked(fork_server, "python -m probe_module x")


def test_engine_is_the_console_script_with_its_errors_and_exit_status(
    fork_server: ForkServer, tmp_path: Path
) -> None:
    version = _run(fork_server, ["engine", "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("engine, version "), version
    missing = _run(fork_server, ["engine", "runs", "show", "nope"], tmp_path)
    assert missing.returncode == 1, missing
    assert missing.stderr.startswith("error: ") and len(missing.stderr.splitlines()) == 1
    assert _forked(fork_server, "engine runs show nope")


def test_a_traceback_reads_as_a_fresh_interpreters(fork_server: ForkServer, tmp_path: Path) -> None:
    (tmp_path / "boom.py").write_text("def f():\n    raise ValueError('boom')\n\nf()\n")
    done = _run(fork_server, ["python", "boom.py"], tmp_path)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[:2] == [
        "Traceback (most recent call last):",
        '  File "boom.py", line 4, in <module>',
    ]
    assert lines[-1] == "ValueError: boom"
    assert "forkserver" not in done.stderr and "runpy" not in done.stderr


def test_what_the_server_does_not_run_runs_the_real_program(
    fork_server: ForkServer, tmp_path: Path
) -> None:
    done = _run(fork_server, ["python", "-c", "import sys; print(sys.argv)"], tmp_path)
    assert done.returncode == 0 and done.stdout == "['-c']\n", done
    assert not _forked(fork_server, "python -c import sys; print(sys.argv)")


def _started(server: ForkServer, cwd: Path) -> tuple[subprocess.Popen[str], int]:
    """A long-running command and the pid of its fork."""
    (cwd / "sleeper.py").write_text(
        "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(600)\n"
    )
    shim = subprocess.Popen(
        [str(server.venv / "bin" / "python"), "sleeper.py"],
        cwd=cwd,
        env=base_env(server.venv),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert shim.stdout is not None
    return shim, int(shim.stdout.readline())


def _stop(shim: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(shim.pid, signal.SIGKILL)
    shim.wait(DEADLINE)
    assert shim.stdout is not None
    shim.stdout.close()


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_signal_to_the_shim_is_the_commands_and_so_is_its_death(
    fork_server: ForkServer, tmp_path: Path
) -> None:
    shim, pid = _started(fork_server, tmp_path)
    try:
        assert pid != shim.pid
        shim.send_signal(signal.SIGTERM)
        assert shim.wait(DEADLINE) == -signal.SIGTERM  # it died of it, as python would
        assert _gone(pid)
    finally:
        _stop(shim)


def test_a_killed_shim_takes_its_command_with_it(fork_server: ForkServer, tmp_path: Path) -> None:
    shim, pid = _started(fork_server, tmp_path)
    _stop(shim)  # as the doc test does with a block's processes
    assert _gone(pid), f"the command {pid} outlived its shim"
