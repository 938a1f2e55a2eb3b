"""Runs the blocks of one document, in order, in one fresh directory, as a reader would.

Shell blocks run in bash (`set -eo pipefail`) with the project's venv first on PATH, so `engine`
resolves (the doc venv of `forkserver.py`: its `engine` and `python` are real processes, forks
of one pre-imported Python, not fresh interpreters that import everything); exported variables
and the working directory carry over from one block to the next, as in the reader's terminal.
What a reader does by hand, the session does for them, and nothing else:

- `python3 -m venv .venv && .venv/bin/pip install ...` links the doc venv instead (the
  install itself is what CI does; repeating it per document would cost minutes);
- long-running commands (`engine run APP`, the fake OpenAI server) start in the background, and
  the next command waits until they say they are ready, as a reader would look before typing on;
- `RUN_ID` stands for the id the last `engine trigger` printed; the fake server's port 8765 is
  replaced by a free one (several doc tests may run at once on one machine);
- once the blocks have run, every run they triggered must reach COMPLETED (or the status of
  the block's `expect STATUS (why)` marker) within RUN_DEADLINE, the workers still running;
- the `job-body` fragments run as jobs of a generated app (`jobbody.py`);
- on PostgreSQL (marker `postgres`), any `postgresql://` URL in a block is the throwaway database.

Every process a block starts is in that block's process group, killed when the document ends
(the fork server kills a command whose shim dies).
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from docs.blocks import CONSOLE, PYTHON, ROOT, SHELL, Block

from docs import jobbody

FIXTURES = Path(__file__).parent / "fixtures"
CHECK_RUNS = Path(__file__).parent / "checkruns.py"
BLOCK_TIMEOUT = 180.0  # hard limit per block; a block normally takes a few seconds
RUN_DEADLINE = 120  # seconds for a triggered run to reach the status its document expects
DOC_PORT = "8765"

# What the checkout a reader works in holds, that a block may use (linked, never written).
CHECKOUT = ("examples",)

_VENV_SETUP = re.compile(r"python3? -m venv \.venv && \.venv/bin/pip install [^&]*?(?=&&|$)")
_URL = re.compile(r"postgres(?:ql)?(?:\+asyncpg)?://[^\s'\"]+")
_ASSIGN = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)+")
_BACKGROUND = re.compile(r"^(?P<cmd>.*?[^&])&\s*(?:#.*)?$")
_COMMENT = re.compile(r"\s+#.*$")
# Commands that do not return by themselves, and what each prints once it is ready.
LONG_RUNNING = (
    (re.compile(r"^engine run\b"), "engine worker "),
    (re.compile(r"^python3? -m integrations\.openai\.testing\b"), "listening on"),
)

PRELUDE = r"""
_doc_bg() {  # _doc_bg READY CMD...: CMD in the background; returns once its output shows READY
  local ready=$1 log pid i
  shift
  log=$(mktemp "$DOC_DIR/.background-XXXXXX.log")
  "$@" >"$log" 2>&1 &
  pid=$!
  for ((i = 0; i < 900; i++)); do
    if grep -qF -- "$ready" "$log"; then cat "$log"; return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "doc-test: \`$*\` exited before it printed '$ready':" >&2; cat "$log" >&2; return 1
    fi
    sleep 0.1
  done
  echo "doc-test: \`$*\` did not print '$ready' within 90 s:" >&2; cat "$log" >&2; return 1
}
engine() {  # remembers the run id `engine trigger` prints, for RUN_ID in later commands
  if [ "${1-}" = trigger ]; then
    local out rc=0
    out=$(command engine "$@") || rc=$?
    if [ -n "$out" ]; then printf '%s\n' "$out"; fi
    if [ "$rc" = 0 ]; then
      printf '%s\n' "$out" | tail -n 1 >"$DOC_DIR/.last-run"
      printf '%s %s\n' "$(tail -n 1 "$DOC_DIR/.last-run")" "${DOC_EXPECT:-COMPLETED}" \
        >>"$DOC_DIR/.triggered"
    fi
    return "$rc"
  fi
  command engine "$@"
}
_doc_last_run() {
  if [ ! -s "$DOC_DIR/.last-run" ]; then
    echo "doc-test: RUN_ID before any engine trigger" >&2; return 1
  fi
  tail -n 1 "$DOC_DIR/.last-run"
}
_doc_save() { export -p >"$DOC_DIR/.env.sh"; pwd >"$DOC_DIR/.cwd"; }
"""


# What no block's environment inherits from the test's: the reader's terminal has none of it.
DROPPED = frozenset(
    {
        "ENGINE_DATABASE_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "VIRTUAL_ENV",
        "PYTEST_CURRENT_TEST",
        "PYTEST_ADDOPTS",
        "PYTHONPATH",
    }
)


def base_env(venv: Path) -> dict[str, str]:
    """The environment every block starts from (`venv`: the doc venv, see forkserver.py)."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env["DOC_VENV"] = str(venv)
    return env


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _shell_line(line: str, ready_line: str | None = None) -> str:
    """One line of a shell block, as the session runs it (`ready_line`: what a long-running
    command prints once ready, when the document shows it)."""
    line = _VENV_SETUP.sub('ln -sfn "$DOC_VENV" .venv ', line)
    line = re.sub(r"\bRUN_ID\b", '"$(_doc_last_run)"', line)
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return line
    background = _BACKGROUND.match(stripped)
    command = background["cmd"].strip() if background else _COMMENT.sub("", stripped)
    for pattern, ready in LONG_RUNNING:
        assignments = _ASSIGN.match(command)
        bare = command[assignments.end() :] if assignments else command
        if pattern.match(bare):
            prefix = "env " if assignments else ""
            return f"_doc_bg {shlex.quote(ready_line or ready)} {prefix}{command}"
    return line


def console_to_shell(text: str) -> str:
    """`$ command` lines run; the lines after one are output it must print (or, for a
    long-running command, print before the next command runs)."""
    out: list[str] = []
    pending: str | None = None
    expected: list[str] = []

    def flush() -> None:
        if pending is None:
            return
        line = _shell_line(pending, expected[0] if expected else None)
        if line.startswith("_doc_bg ") or not expected:
            out.append(line)
        else:
            out.append(f"_doc_out=$({pending}); printf '%s\\n' \"$_doc_out\"")
            out.extend(f'grep -qF -- {shlex.quote(e)} <<<"$_doc_out"' for e in expected)

    for raw in text.splitlines():
        if raw.startswith("$ "):
            flush()
            pending, expected = raw[2:], []
        elif raw.strip():
            expected.append(raw.strip())
    flush()
    return "\n".join(out) + "\n"


def shell_script(text: str) -> str:
    return "\n".join(_shell_line(line) for line in text.splitlines()) + "\n"


@dataclass
class Outcome:
    block: Block
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.block.name}: exit {self.returncode} after {self.seconds:.1f}s\n"
            f"--- block:\n{self.block.text}--- stdout:\n{self.stdout}\n"
            f"--- stderr:\n{self.stderr}"
        )


@dataclass
class DocSession:
    """One document's directory, environment and processes."""

    directory: Path
    venv: Path  # the doc venv (forkserver.py): `engine` and `python` are its shims
    database_url: str | None = None  # PostgreSQL: the throwaway database
    port: str = field(default_factory=free_port)
    groups: list[int] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    job_bodies: dict[str, str] = field(default_factory=dict)  # module -> block name
    stub_port: str = field(default_factory=free_port)

    def __post_init__(self) -> None:
        for name in CHECKOUT:
            (self.directory / name).symlink_to(ROOT / name)
        (self.directory / ".doc-prelude.sh").write_text(PRELUDE)

    # -- environment ---------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = base_env(self.venv)
        env["DOC_DIR"] = str(self.directory)
        if self.database_url:
            env["ENGINE_DATABASE_URL"] = self.database_url
        return env

    def text_of(self, block: Block) -> str:
        text = re.sub(rf"\b{DOC_PORT}\b", self.port, block.text)
        if block.postgres and self.database_url:
            text = _URL.sub(self.database_url, text)
        return text

    # -- blocks --------------------------------------------------------------------------------

    def run(self, block: Block) -> Outcome | None:
        """Runs (or writes, or compiles) one block; None when there was nothing to execute."""
        for fixture in (m.arg for m in block.markers if m.word == "fixture" and m.arg):
            self._copy_fixture(fixture)
        target = block.target_file
        if target is not None:
            path, append = target
            dest = self.directory / path
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("a" if append else "w") as f:
                f.write(self.text_of(block))
            return None
        if block.lang in PYTHON:
            if block.marker("job-body"):
                name = jobbody.module_name(block)
                source = jobbody.job_module(
                    block, self.text_of(block), jobbody.stub_address(self.stub_port)
                )
                (self.directory / f"{name}.py").write_text(source)
                self.job_bodies[name] = block.name
                return None
            if block.marker("compile"):
                compile_and_import(block)
                return None
            script = self.directory / f".block-{block.line}.py"
            script.write_text(self.text_of(block))
            return self._spawn(block, [str(self.venv / "bin" / "python"), script.name])
        if block.lang in SHELL | CONSOLE:
            text = self.text_of(block)
            body = console_to_shell(text) if block.lang in CONSOLE else shell_script(text)
            script = self.directory / f".block-{block.line}.sh"
            return self._bash(block, body)
        raise AssertionError(f"{block.name}: no runner for {block.lang!r} blocks")

    def _bash(self, block: Block, body: str) -> Outcome:
        script = self.directory / f".block-{block.line}.sh"
        script.write_text(
            'source "$DOC_DIR/.doc-prelude.sh"\n'
            'if [ -f "$DOC_DIR/.env.sh" ]; then source "$DOC_DIR/.env.sh"; fi\n'
            'if [ -f "$DOC_DIR/.cwd" ]; then cd "$(cat "$DOC_DIR/.cwd")"; fi\n'
            # This block's own expectation, not the one a previous block exported.
            f"export DOC_EXPECT={block.expected_status}\n"
            "trap _doc_save EXIT\nset -eo pipefail\n" + body
        )
        return self._spawn(block, ["bash", str(script)])

    def run_job_bodies(self, doc: str) -> Outcome | None:
        """The document's `job-body` fragments, each run once as a job by one real worker."""
        if not self.job_bodies:
            return None
        script = jobbody.runner_script(self.job_bodies, self.stub_port)
        (self.directory / ".doc-jobs.py").write_text(script)
        block = Block(f"{doc} (its job-body fragments)", 0, "python", script)
        return self._spawn(block, [str(self.venv / "bin" / "python"), ".doc-jobs.py"])

    def check_triggered_runs(self, doc: str) -> Outcome | None:
        """Every run the blocks triggered reaches the status its block expects (COMPLETED)."""
        if not (self.directory / ".triggered").exists():
            return None
        check = f'python {shlex.quote(str(CHECK_RUNS))} "$DOC_DIR/.triggered" {RUN_DEADLINE}\n'
        block = Block(f"{doc} (the runs it triggered)", 1, "bash", check)
        return self._bash(block, block.text)

    def _copy_fixture(self, name: str) -> None:
        source = FIXTURES / name
        dest = self.directory / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(source.read_bytes())

    def _spawn(self, block: Block, argv: list[str]) -> Outcome:
        # Output goes to files, not pipes: a background process a block leaves running keeps
        # its copy of the descriptors, and reading a pipe would wait for it to exit.
        out_path = self.directory / f".block-{block.line}.out"
        err_path = self.directory / f".block-{block.line}.err"
        started = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=self.directory,
                env=self.env(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            self.groups.append(proc.pid)
            try:
                returncode = proc.wait(BLOCK_TIMEOUT)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait(10)
                returncode = -9
        outcome = Outcome(
            block,
            returncode,
            out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"),
            time.monotonic() - started,
        )
        if returncode == -9:
            outcome.stderr += f"\ndoc-test: killed after {BLOCK_TIMEOUT}s"
        self.outcomes.append(outcome)
        return outcome

    def background_logs(self) -> dict[str, str]:
        return {
            p.name: p.read_text(errors="replace")
            for p in sorted(self.directory.glob(".background-*.log"))
        }

    def close(self) -> None:
        """Kills every process a block started (nothing of theirs is checked after this)."""
        for pgid in self.groups:
            _kill_group(pgid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def compile_and_import(block: Block) -> None:
    """A fragment (marker `compile`): it must compile (top-level `await` allowed, as in a job's
    body), and what it imports must exist."""
    tree = compile(
        block.text, block.name, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    compile(tree, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    imports = ast.Module(
        body=[n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)],
        type_ignores=[],
    )
    exec(compile(imports, block.name, "exec"), {})
