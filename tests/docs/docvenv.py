"""The doc venv: what the blocks see as the project's venv, and the fork server behind it.

Its bin/ holds the shims (`shim.py`) as `engine`, `python`, `python3`..., links to every other
program of the real venv, and `activate` scripts that put it first on PATH; its other entries
(lib/, pyvenv.cfg) are links to the real venv's. `ForkServer` installs it and runs the server
(`forkserver.py`, started as the other tests' `forked.Server`) for a test session.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import forked

HERE = Path(__file__).resolve().parent
VENV = Path(sys.prefix)
PROGRAMS = ("engine", "python", "python3", f"python3.{sys.version_info.minor}")


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
    server: forked.Server | None = None

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
        install(self.venv, self.directory / "s")  # the socket forked.Server listens on
        if fork:
            try:
                self.server = forked.Server(self.env, self.directory)
            except RuntimeError as exc:
                raise AssertionError(str(exc)) from None
        return self

    def close(self) -> None:
        if self.server is not None:
            self.server.close()  # it kills the commands still running
