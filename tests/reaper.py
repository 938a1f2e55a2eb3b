"""No orphans when the test session is killed with SIGTERM (CI's `timeout`).

The tests start `engine` processes, fake servers and dashboards each in its own session, so that
a test's teardown can kill the whole group. Those groups are outside pytest's, so a SIGTERM to
pytest's group (what `timeout` sends) would not reach them, and Python's default SIGTERM ends
the process without running any teardown. `install()` makes SIGTERM first kill the group of
every child process that leads its own group, pass the signal on to the children in pytest's
own group (the xdist workers, which do the same for theirs), run the registered cleanups
(private PostgreSQL clusters, which daemonize and have no parent to be found by), and only then
end the process as SIGTERM would have.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path
from types import FrameType

_cleanups: dict[int, Callable[[], None]] = {}


def on_terminate(cleanup: Callable[[], None]) -> Callable[[], None]:
    """Runs `cleanup` if the session is killed with SIGTERM before the returned function (call
    it once the resource is released normally) forgets it."""
    key = id(cleanup)
    _cleanups[key] = cleanup
    return lambda: _cleanups.pop(key, None) and None


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc; none where it is missing)."""
    found = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            # Field 4 of /proc/PID/stat is the parent's pid; the command name (field 2) may
            # hold spaces and parentheses, so the fields are counted from its closing one.
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry.name))
    return found


def reap() -> None:
    """Kills what this process started: its children's own groups, then SIGTERM to the children
    in its group, then the registered cleanups."""
    own_group = os.getpgrp()
    for child in children(os.getpid()):
        with contextlib.suppress(OSError):
            group = os.getpgid(child)
            if group == own_group:
                os.kill(child, signal.SIGTERM)
            elif group == child:
                os.killpg(group, signal.SIGKILL)
    for cleanup in list(_cleanups.values()):
        with contextlib.suppress(Exception):
            cleanup()
    _cleanups.clear()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    reap()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def install() -> None:
    """Makes SIGTERM reap this process's children first (main thread only; idempotent)."""
    with contextlib.suppress(ValueError):  # not the main thread: leave the default
        signal.signal(signal.SIGTERM, _on_sigterm)
