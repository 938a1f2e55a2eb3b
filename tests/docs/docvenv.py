"""The doc venv: what the blocks see as the project's venv, and the fork server behind it.

Its bin/ holds the shims (`shim.py`) as `engine`, `python`, `python3`..., links to every other
program of the real venv, and `activate` scripts that put it first on PATH; its other entries
(lib/, pyvenv.cfg) are links to the real venv's. `ForkServer` installs it and runs the server
(`forkserver.py`) for a test session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVER = HERE.parent / "forkserver.py"  # shared with the other tests' `forked.spawn`
VENV = Path(sys.prefix)
PROGRAMS = ("engine", "python", "python3", f"python3.{sys.version_info.minor}")
READY = "fork server ready"  # what forkserver.py prints once it listens
START_TIMEOUT = 120.0  # its imports, on a loaded machine


def install(venv: Path, socket_path: Path) -> None:
    """The doc venv: the real venv's programs, but `engine` and `python` are shims."""
    real_bin = VENV / "bin"
    (venv / "bin").mkdir(parents=True)
    for entry in VENV.iterdir():
        if entry.name != "bin":
            (venv / entry.name).symlink_to(entry)
    shim = (HERE / "shim.py").read_text()
    shim = shim.replace("@SOCKET@", str(socket_path)).replace("@REAL_BIN@", str(real_bin))
    for program in real_bin.iterdir():
        target = venv / "bin" / program.name
        if program.name in PROGRAMS:
            target.write_text(f"#!{real_bin / 'python'} -IS\n{shim}")
            target.chmod(0o755)
        elif program.name.startswith("activate"):
            target.write_text(program.read_text().replace(str(VENV), str(venv)))
        else:
            target.symlink_to(program)


@dataclass
class ForkServer:
    """The server process and its doc venv, for one test session."""

    directory: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def venv(self) -> Path:
        return self.directory / "venv"

    @property
    def log(self) -> Path:
        """The server's log: one line per command it ran (its CPU, its exit status)."""
        return self.directory / "forkserver.log"

    def start(self, fork: bool = True) -> ForkServer:
        """Installs the doc venv; starts the server unless `fork` is false (then every shim
        runs the real program: no server listens)."""
        socket_path = Path(self.directory, "s")  # short: a unix socket's path has 107 bytes
        install(self.venv, socket_path)
        if not fork:
            return self
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(VENV / "bin" / "python"),
                    str(SERVER),
                    str(socket_path),
                ],
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while READY not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"the fork server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def close(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()  # it kills the commands still running
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
