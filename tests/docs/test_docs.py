"""Every shell command and Python example in README.md and docs/ runs, as written.

One test per document runs its blocks in order in one fresh directory (see `session.py` for
what the session does on the reader's behalf), then checks that every run its commands
triggered reached COMPLETED (or what the block's `expect` marker says), and runs its `job-body`
fragments as real jobs (`jobbody.py`); the blocks marked `postgres` run in a second test
against a throwaway PostgreSQL database. SQL blocks run against a database seeded with real rows
(`seed.py`). Blocks marked `skip (why)` are reported as skipped tests, by name and reason, and
there must stay few of them. A block fails its document when it exits non-zero or prints a
traceback or an `error:` line on stderr.

The blocks' `engine` and `python` commands are forks of one pre-imported Python
(`forkserver.py`), which saves most of the doc test's CPU; ENGINE_DOCS_FORK=0 runs the real
programs instead (the same test, several times the CPU).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from docs.blocks import (
    PYTHON,
    ROOT,
    RUNNABLE,
    SQL,
    Block,
    MarkerError,
    documents,
    extract,
    parse_markers,
)
from docs.jobbody import job_module
from docs.seed import Seed, seeded
from docs.session import DocSession, Outcome, base_env, console_to_shell, shell_script
from docs.sql import Answer, run_postgres, run_sqlite, statements

# The blocks that cannot run at all; raise it only with a reason that cannot be fixed.
MAX_SKIPS = 8
# Python blocks only compiled (API listings, skeletons): a fragment of a job is `job-body`.
MAX_COMPILE_ONLY = 8
PARALLEL = 4  # documents run side by side
DOC_TIMEOUT = 300.0  # a whole document; each block has its own hard timeout too
# Queries whose answer may be empty on the seeded database (nothing there to find).
MAY_BE_EMPTY = ("lost executions",)


def _load() -> tuple[dict[str, list[Block]], dict[str, str]]:
    blocks: dict[str, list[Block]] = {}
    errors: dict[str, str] = {}
    for path in documents():
        doc = path.relative_to(ROOT).as_posix()
        try:
            blocks[doc] = [b for b in extract(path) if b.lang in RUNNABLE or b.target_file]
        except MarkerError as exc:
            errors[doc] = str(exc)
    return blocks, errors


BLOCKS, MARKER_ERRORS = _load()
ALL = [b for blocks in BLOCKS.values() for b in blocks]
SKIPPED = [b for b in ALL if b.skip_reason]
COMPILE_ONLY = [b for b in ALL if b.marker("compile")]


def _to_run(doc: str, postgres: bool) -> list[Block]:
    return [b for b in BLOCKS[doc] if not b.skip_reason and b.postgres == postgres]


SQLITE_DOCS = [doc for doc in BLOCKS if _to_run(doc, False)]
POSTGRES_DOCS = [doc for doc in BLOCKS if _to_run(doc, True)]


@pytest.fixture(scope="module")
def sqlite_documents(
    tmp_path_factory: pytest.TempPathFactory, doc_venv: Path
) -> Iterator[dict[str, Future[Ran]]]:
    """Every document's SQLite run, started at once: they are independent, and much of their
    time is spent waiting (for workers, runs, the fake OpenAI server's delays)."""
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        futures = {
            doc: pool.submit(
                _run_document, _to_run(doc, False), tmp_path_factory.mktemp("doc"), doc_venv, None
            )
            for doc in SQLITE_DOCS
        }
        yield futures


@pytest.mark.slow
@pytest.mark.timeout(DOC_TIMEOUT + 60)
# One xdist worker runs them all: the module fixture above starts every document at once.
@pytest.mark.xdist_group("docs-sqlite")
@pytest.mark.parametrize("doc", SQLITE_DOCS)
def test_document(doc: str, sqlite_documents: dict[str, Future[Ran]]) -> None:
    print(sqlite_documents[doc].result(timeout=DOC_TIMEOUT).timings)  # shown with -s


@pytest.mark.slow
@pytest.mark.timeout(DOC_TIMEOUT + 60)
@pytest.mark.xdist_group("docs-sqlite")
def test_the_readme_quick_start_runs_offline_and_prints_a_command_that_works(
    sqlite_documents: dict[str, Future[Ran]], doc_venv: Path
) -> None:
    """The README's main command (the data visualizer, on the SQLite default, offline against
    the fake OpenAI server as no key is set) says so, shows the task tree and leaves ./engine.db;
    its last line is a command that shows the run again and works as printed without the venv's
    bin/ on PATH (the README's one-liner never activates the venv)."""
    ran = sqlite_documents["README.md"].result(timeout=DOC_TIMEOUT)
    (outcome,) = [o for o in ran.outcomes if "examples/data_visualizer.py" in o.block.text]
    out = outcome.stdout
    assert "running OFFLINE against the local fake OpenAI server" in out, outcome
    assert "COMPLETED" in out, outcome
    for key in ("upload-file", "create-assistant", "create-thread", "list-messages"):
        assert key in out, outcome
    assert (ran.directory / "engine.db").exists()

    hint = out.strip().splitlines()[-1]
    assert hint.startswith("inspect it again with: "), outcome
    command = hint.removeprefix("inspect it again with: ")
    run_id = command.split()[-1]
    env = base_env(doc_venv)
    venv_bins = {str(doc_venv / "bin"), str(Path(sys.prefix) / "bin")}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if p not in venv_bins)
    shown = subprocess.run(
        command, shell=True, cwd=ran.directory, env=env, capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, f"$ {command}\n{shown.stdout}{shown.stderr}"
    assert run_id in shown.stdout and "COMPLETED" in shown.stdout, shown.stdout


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("doc", POSTGRES_DOCS)
def test_document_on_postgres(doc: str, tmp_path: Path, doc_venv: Path, pg_url: str) -> None:
    print(_run_document(_to_run(doc, True), tmp_path, doc_venv, pg_url).timings)


@pytest.mark.parametrize("block", SKIPPED, ids=[b.name for b in SKIPPED])
def test_skipped_block(block: Block) -> None:
    pytest.skip(f"{block.name}: {block.skip_reason}")


def test_few_blocks_are_skipped_and_each_says_why() -> None:
    names = [f"{b.name}: {b.skip_reason}" for b in SKIPPED]
    assert len(SKIPPED) <= MAX_SKIPS, "too many doc blocks skipped:\n" + "\n".join(names)


def test_few_blocks_are_only_compiled_and_each_says_why() -> None:
    names = [f"{b.name}: {m.reason}" for b in COMPILE_ONLY if (m := b.marker("compile"))]
    assert len(COMPILE_ONLY) <= MAX_COMPILE_ONLY, "too many compile-only blocks:\n" + "\n".join(
        names
    )


def test_every_marker_parses() -> None:
    assert not MARKER_ERRORS, "\n".join(MARKER_ERRORS.values())


def test_every_code_block_is_run_or_checked() -> None:
    """A shell or Python block is run, written to a file, compiled, or skipped with a reason:
    a new example cannot slip past the doc test."""
    assert {b.doc for b in ALL if b.lang in PYTHON} >= {"README.md", "docs/howto.md"}
    unhandled = [b.name for b in ALL if b.lang not in RUNNABLE and not b.target_file]
    assert not unhandled


# -- running one document -------------------------------------------------------------------


@dataclass
class Ran:
    """A document that ran: where, what each block did, and how long each took."""

    directory: Path
    outcomes: list[Outcome]
    timings: str


def _run_document(
    blocks: list[Block], directory: Path, venv: Path, database_url: str | None
) -> Ran:
    session = DocSession(directory, venv, database_url)
    timings: list[str] = []
    try:
        for block in blocks:
            if block.lang in SQL and not block.target_file:
                continue
            outcome = session.run(block)
            if outcome is None:
                continue
            _check(outcome, timings)
        doc = blocks[0].doc if blocks else "?"
        for step in (session.run_job_bodies, session.check_triggered_runs):
            last = step(doc)
            if last is not None:
                _check(last, timings)
        for name, log in session.background_logs().items():
            assert "Traceback" not in log, f"{name} (a background command):\n{log}"
    finally:
        started = time.monotonic()
        session.close()
        timings.append(f"{time.monotonic() - started:5.1f}s stopping what the blocks started")
    sql = [b for b in blocks if b.lang in SQL and not b.target_file]
    if sql:
        url = database_url or f"sqlite+aiosqlite:///{directory / 'seeded.db'}"
        started = time.monotonic()
        seed, answers = asyncio.run(_answer(sql, url))
        _check_answers(seed, answers)
        timings.append(f"{time.monotonic() - started:5.1f}s seeding and the SQL")
    return Ran(directory, session.outcomes, "\n".join(timings))


def _check(outcome: Outcome, timings: list[str]) -> None:
    timings.append(f"{outcome.seconds:5.1f}s {outcome.block.name}")
    assert outcome.returncode == 0, str(outcome)
    assert "Traceback" not in outcome.stdout + outcome.stderr, str(outcome)
    # The CLI's one-line errors (stderr): a command whose failure does not stop its block
    # (`until CMD; ...`, `CMD || ...`) still fails the document. Not stdout, where `runs show`
    # prints a failed task's `error: ...` (a document may show a run that fails).
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert not errors, str(outcome)


async def _answer(blocks: list[Block], url: str) -> tuple[Seed, list[Answer]]:
    answers: list[Answer] = []
    async with seeded(url) as seed:
        for block in blocks:
            todo = statements(block, seed.runs["completed"])
            if url.startswith("sqlite"):
                answers += run_sqlite(url, todo)
            else:
                answers += await run_postgres(url, todo)
    return seed, answers


def _check_answers(seed: Seed, answers: list[Answer]) -> None:
    shown = "\n\n".join(
        f"-- {a.statement.label}\n{a.statement.sql}\n{a.columns}\n" + "\n".join(map(str, a.rows))
        for a in answers
    )
    for answer in answers:
        label = answer.statement.label.lower()
        if not any(word in label for word in MAY_BE_EMPTY):
            assert answer.rows, f"no rows on a seeded database:\n{answer.statement.sql}\n{shown}"
        if "rate limit" in label:
            # Only the call whose last answer was a 429 (not the one waiting after a 500, not
            # the completed one that was retried for other reasons or succeeded since).
            found = {row[0] for row in answer.rows}
            assert found == {seed.runs["rate-limited-waiting"]}, shown
            assert all("429" in str(row) for row in answer.rows), shown


# -- the harness's own rules -----------------------------------------------------------------


def test_a_skip_needs_a_reason_and_a_typo_is_an_error() -> None:
    with pytest.raises(MarkerError, match="needs a reason"):
        parse_markers([" skip "], "x.md:1")
    with pytest.raises(MarkerError, match="unknown doc-test marker 'skpi"):
        parse_markers([" skpi (typo) "], "x.md:1")
    assert parse_markers([" postgres; file app.py "], "x.md:1")[1].arg == "app.py"
    with pytest.raises(MarkerError, match="compile` needs a reason"):
        parse_markers([" compile "], "x.md:1")
    with pytest.raises(MarkerError, match="not a run status"):
        parse_markers([" expect DONE "], "x.md:1")
    with pytest.raises(MarkerError, match="expect WAITING` needs a reason"):
        parse_markers([" expect WAITING "], "x.md:1")
    assert parse_markers([" expect WAITING (overnight) "], "x.md:1")[0].arg == "WAITING"


def test_a_job_body_fragment_becomes_a_job_with_its_surroundings() -> None:
    fragment = (
        "from engine import RetryPolicy\n\n"
        "async def helper(params: dict) -> int:\n"
        "    return await something(params)\n\n"
        "register(helper)\n"
        "run = await io.openai.beta.threads.runs.retrieve('get', 'thread_abc123', 'run_abc123')\n"
        "print(file.id, run.id)\n"
    )
    block = Block("x.md", 3, "python", fragment, parse_markers([" job-body "], "x.md:2"))
    module = job_module(block, fragment, "http://127.0.0.1:1")
    compile(module, "generated", "exec")
    before_job, job_part = module.split("async def doc_job", 1)
    # Imports, definitions and registrations are the app module's; the rest is the job's.
    assert "from engine import RetryPolicy" in before_job
    assert "register(helper)" in before_job
    assert 'retrieve(\'get\', _given["ids"]["thread_abc123"]' in job_part
    # Only the OpenAI objects the body uses are made (`run` is its own, `file` is not).
    assert "('file', 'ids')" in job_part
    assert "file = _given['file']" in job_part
    assert "run = _given" not in job_part


def test_long_running_commands_start_in_the_background_and_are_waited_for() -> None:
    script = shell_script(
        "engine run app.py &            # a worker\n"
        "engine runs show RUN_ID\n"
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/python x.py\n"
    )
    lines = script.splitlines()
    assert lines[0] == "_doc_bg 'engine worker ' engine run app.py"
    assert lines[1] == 'engine runs show "$(_doc_last_run)"'
    assert lines[2] == 'ln -sfn "$DOC_VENV" .venv && .venv/bin/python x.py'
    console = console_to_shell(
        "$ python -m integrations.openai.testing --port 1\nfake OpenAI listening on X\n"
        "$ A=1 engine run myapp.py\n"
    )
    assert console.splitlines() == [
        "_doc_bg 'fake OpenAI listening on X' python -m integrations.openai.testing --port 1",
        "_doc_bg 'engine worker ' env A=1 engine run myapp.py",
    ]
