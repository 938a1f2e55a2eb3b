"""The `engine` and `python` a doc block runs: a client of the fork server (`forkserver.py`).

`forkserver.install` copies this file into the doc venv's bin/ as `engine`, `python`... with
its two constants filled in, under a shebang that starts Python without `site` (a few
milliseconds). It hands the server its argv, environment, working directory and its stdin,
stdout and stderr (the descriptors themselves), then stands for the command it asked for: it
forwards the signals it receives to it, and exits with its exit status (or dies of its signal).
The server runs the command as a fork of a Python that has already imported the engine, which
saves the ~0.7 s of CPU each `engine` command spends importing. When the server cannot run a
command as a real interpreter would (options it does not handle, a different PYTHON*
environment), the shim execs the real program instead.

Only the standard library: this runs before any site-packages are on the path.
"""

import json
import os
import signal
import socket
import sys

SOCKET = "@SOCKET@"  # the fork server's socket
REAL_BIN = "@REAL_BIN@"  # the project venv's bin/, where the real programs are
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def _real() -> str:
    return os.path.join(REAL_BIN, os.path.basename(sys.argv[0]))


def _exec_real() -> None:
    real = _real()
    os.execv(real, [real, *sys.argv[1:]])


def _exit_like(status: int) -> None:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main() -> None:
    request = {
        "program": os.path.basename(sys.argv[0]),
        "invoked": os.path.abspath(sys.argv[0]),
        "real": _real(),
        "args": sys.argv[1:],
        "env": dict(os.environ),
        "cwd": os.getcwd(),
    }
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        conn.connect(SOCKET)
        socket.send_fds(conn, [json.dumps(request).encode()], [0, 1, 2])
        answer = conn.recv(64).decode()
    except OSError:  # no server (any more), or a closed stdin/stdout/stderr: the real one
        answer = "exec"
    if answer == "exec":
        conn.close()
        _exec_real()
    pid = int(answer.split()[1])  # "pid N"
    for sig in FORWARDED:
        signal.signal(sig, lambda sig, frame: os.kill(pid, sig))
    answer = conn.recv(64).decode()  # "exit STATUS" once the command has exited
    if not answer:
        sys.stderr.write(f"doc-test: the fork server died while {pid} ran\n")
        os._exit(1)
    _exit_like(int(answer.split()[1]))


if __name__ == "__main__":
    main()
