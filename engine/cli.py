"""The `engine` command: run workers, trigger runs, inspect and control them.

Built on click (parsing, help, exit codes) and rich (tables and trees for people); `--json`
output is for scripts and is exactly what CONTRACT.md section 4 says.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import click

from .cli_events import events, signal_run
from .cli_schedules import schedules
from .cli_streams import stream_command

# The commands below keep the short private names these helpers had before they moved to
# engine/cli_support.py (shared with engine/cli_workers.py).
from .cli_support import DB_HELP as _DB_HELP
from .cli_support import EngineGroup
from .cli_support import console as _console
from .cli_support import fail as _fail
from .cli_support import parse_time as _parse
from .cli_support import run as _run
from .cli_support import short_time as _short_time
from .cli_support import with_engine as _with_engine
from .cli_workers import jobs, unserved, workers
from .exceptions import EngineError
from .recovery import DEFAULT_MAX_RECOVERIES, MAX_RECOVERIES

if TYPE_CHECKING:
    from datetime import datetime

    from rich.console import Console
    from rich.tree import Tree

    from .client import Engine

# Every command pays for what this module imports, `--help` included: SQLAlchemy, pydantic,
# rich, alembic and the worker are imported inside the commands that use them
# (tests/acceptance/test_cli_newcomer.py checks that `import engine.cli` stays light).

_STATUS_STYLE = {
    "COMPLETED": "green",
    "FAILED": "red",
    "ERRORED": "red",
    "CANCELED": "yellow",
    "WAITING": "cyan",
    "RUNNING": "blue",
    "QUEUED": "white",
}


@click.group(cls=EngineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="engine")
def main() -> None:
    """A durable-execution engine: async jobs whose steps are recorded in a SQL task log."""


@main.command()
@click.argument("app")
@click.option("--database-url", help=_DB_HELP)
@click.option("--concurrency", default=20, show_default=True, help="Runs in flight at once.")
@click.option(
    "--lease-seconds",
    default=30.0,
    show_default=True,
    help="How long a run stays claimed without a heartbeat before another worker may take it over.",
)
@click.option(
    "--max-recoveries",
    default=DEFAULT_MAX_RECOVERIES,
    show_default=True,
    help=f"Times a run whose execution was lost (lease lapsed, worker gone) is executed again "
    f"before it ends FAILED (1 to {MAX_RECOVERIES}).",
)
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
)
@click.option("--ui", "with_ui", is_flag=True, help="Serve the web dashboard from this worker too.")
@click.option("--ui-host", default="127.0.0.1", show_default=True, help="The dashboard's address.")
@click.option("--ui-port", default=8008, show_default=True, help="The dashboard's port.")
@click.option("--ui-read-only", is_flag=True, help="The dashboard hides every action.")
def run(
    app: str,
    database_url: str | None,
    concurrency: int,
    lease_seconds: float,
    max_recoveries: int,
    log_level: str,
    with_ui: bool,
    ui_host: str,
    ui_port: int,
    ui_read_only: bool,
) -> None:
    """Execute APP's jobs (a module path or a .py file) until SIGINT/SIGTERM."""
    import logging

    from . import secrets, tracing
    from .worker import run_worker

    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        # `ids`: " run=<id> trace=<id> span=<id>" on lines written inside a run (engine.tracing).
        format="%(asctime)s %(levelname)s %(name)s: %(message)s%(ids)s",
    )
    # Everything the worker logs (the engine's and its libraries' lines) is scrubbed of secrets.
    secrets.install_log_filter(*logging.getLogger().handlers)
    tracing.install_log_ids(*logging.getLogger().handlers)

    async def work() -> None:
        await run_worker(
            app,
            database_url,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            max_recoveries=max_recoveries,
        )

    if not with_ui:
        _run(work)
        return
    # Imported here: Starlette and uvicorn cost a worker without --ui nothing.
    from . import ui as dashboard

    _run(lambda: dashboard.serve_beside(work, database_url, ui_host, ui_port, ui_read_only))


@main.command()
@click.argument("job_id")
@click.option(
    "--payload",
    default=None,
    help="The payload: JSON, @FILE (a JSON file) or - (JSON on stdin).",
)
@click.option(
    "--idempotency-key", default=None, help="Triggering twice with one key gives one run."
)
@click.option("--app", default=None, help="Register APP's jobs first (validates with its model).")
@click.option(
    "--version",
    "version",
    default=None,
    help="The job version to run (default: APP's with --app, else the highest version a live "
    "worker serves, else the highest registered; see `engine jobs list`).",
)
@click.option(
    "--priority",
    type=int,
    default=None,
    help="-100 to 100; higher is claimed first (default: the job's, else 0; see "
    "docs/flow-control.md).",
)
@click.option("--delay", default=None, help="Start no sooner than this from now: 90s, 10m, 2h, 1d.")
@click.option(
    "--at", "at", default=None, help="Start no sooner than this ISO time (UTC unless it says)."
)
@click.option(
    "--timeout",
    default=None,
    help="Cancel the run if unfinished this long after it is due to start: 30m, 2h (default: "
    "the job's timeout=).",
)
@click.option("--database-url", help=_DB_HELP)
def trigger(
    job_id: str,
    payload: str | None,
    idempotency_key: str | None,
    app: str | None,
    version: str | None,
    priority: int | None,
    delay: str | None,
    at: str | None,
    timeout: str | None,
    database_url: str | None,
) -> None:
    """Queue a run of JOB_ID and print its id.

    Nothing is written when the trigger fails. A run that no live worker serves is still
    queued, with a warning on stderr.
    """
    from . import durations
    from .app import load_app
    from .cli_payload import read_payload

    try:
        data = read_payload(payload) if payload is not None else None
        wait = durations.parse(delay, "--delay") if delay is not None else None
        start = _parse_at(at) if at is not None else None
        limit = durations.parse(timeout, "--timeout") if timeout is not None else None
        if app:
            load_app(app)
    except EngineError as exc:
        _fail(exc.message)

    async def queue(engine: Engine) -> tuple[str, str | None]:
        run_id = await engine.trigger(
            job_id,
            data,
            idempotency_key=idempotency_key,
            version=version,
            priority=priority,
            delay=wait,
            at=start,
            timeout=limit,
        )
        return run_id, await unserved(engine, job_id, run_id)

    run_id, warning = _run(lambda: _with_engine(database_url, queue))
    if warning:
        click.echo(f"warning: {warning}", err=True)
    click.echo(run_id)


def _parse_at(text: str) -> datetime:
    from datetime import UTC, datetime

    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise EngineError(
            f"--at {text!r}: give an ISO 8601 time, e.g. 2026-12-01T09:00:00Z"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@main.group()
def runs() -> None:
    """Inspect and control runs."""


@runs.command("list")
@click.option("--job", "job_id", default=None, help="Only runs of this job id.")
@click.option("--version", "version", default=None, help="Only runs of this job version.")
@click.option("--status", default=None, help="Only runs in this status (e.g. FAILED).")
@click.option("--parent", default=None, metavar="RUN_ID", help="Only the child runs of this run.")
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(min=1), help="At most N runs."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--database-url", help=_DB_HELP)
def list_runs(
    job_id: str | None,
    version: str | None,
    status: str | None,
    parent: str | None,
    limit: int,
    as_json: bool,
    database_url: str | None,
) -> None:
    """List runs, newest first."""
    from rich.markup import escape as _escape
    from rich.table import Table

    rows = _run(
        lambda: _with_engine(
            database_url,
            lambda e: e.list_runs(job_id, status, limit, version=version, parent=parent),
            read=True,
        )
    )
    if as_json:
        click.echo(json.dumps(_printable(rows), indent=2))
        return
    table = Table(box=None, header_style="bold")
    table.add_column("ID", no_wrap=True, min_width=32)
    for column in ("JOB", "VERSION", "STATUS", "PRIORITY", "CREATED", "DURATION", "WAITING FOR"):
        table.add_column(column, justify="right" if column == "PRIORITY" else "left")
    for row in rows:
        table.add_row(
            row["id"],
            _escape(row["job_id"]),
            _escape(row["version"] or ""),
            _status(row["status"]),
            str(row.get("priority") or 0),
            _short_time(row["created_at"]),
            _duration(row["started_at"], row["completed_at"]),
            _escape((row.get("waiting_for") or {}).get("summary", "")),
        )
    _console().print(table if rows else "no runs")


@runs.command("show")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--database-url", help=_DB_HELP)
def show_run(run_id: str, as_json: bool, database_url: str | None) -> None:
    """Show a run and its task tree."""

    async def load(engine: Engine) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        view = await engine.show_run(run_id)
        return view, await engine.run_logs(run_id), await engine.get_run(run_id)

    view, logs, row = _run(lambda: _with_engine(database_url, load, read=True))
    view, logs, row = _printable(view), _printable(logs), _printable(row)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    print_run(view, logs)
    _print_recoveries(row)
    if view.get("usage"):
        from .usage import summary_text

        click.echo(f"usage: {view['usage']['calls']} calls, {summary_text(view['usage'])}")


@runs.command("cancel")
@click.argument("run_id")
@click.option("--database-url", help=_DB_HELP)
def cancel_run(run_id: str, database_url: str | None) -> None:
    """Cancel a QUEUED, WAITING or RUNNING run."""
    before = _run(lambda: _with_engine(database_url, lambda e: e.cancel(run_id), read=True))
    click.echo(f"canceled {run_id} (was {before})")


@runs.command("retry")
@click.argument("run_id")
@click.option("--database-url", help=_DB_HELP)
def retry_run(run_id: str, database_url: str | None) -> None:
    """Re-execute a FAILED run from where it failed."""
    _run(lambda: _with_engine(database_url, lambda e: e.retry(run_id), read=True))
    click.echo(f"queued {run_id} again")


runs.add_command(signal_run)
runs.add_command(stream_command)
main.add_command(jobs)
main.add_command(workers)
main.add_command(events)
main.add_command(schedules)


@main.command("usage")
@click.option("--since", default=None, help="From: 7d, 24h, 30m, a date or an ISO time (UTC).")
@click.option("--job", "job_id", default=None, help="Only runs of this job id.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--database-url", help=_DB_HELP)
def usage_command(
    since: str | None, job_id: str | None, as_json: bool, database_url: str | None
) -> None:
    """Tokens and cost of paid API calls by day (UTC), job and model."""
    from rich.markup import escape as _escape
    from rich.table import Table

    from . import clock
    from .usage import cost_text, parse_since

    start = None
    if since is not None:
        try:
            start = parse_since(since, clock.now())
        except ValueError as exc:
            _fail(str(exc))
    report = _run(
        lambda: _with_engine(database_url, lambda e: e.usage_report(start, job_id), read=True)
    )
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    if not report["rows"]:
        click.echo("no usage recorded" + (f" since {since}" if since else ""))
        return
    table = Table(box=None, header_style="bold")
    names = ("DAY", "JOB", "MODEL", "CALLS", "RUNS", "PROMPT", "CACHED", "COMPLETION")
    for column in (*names, "REASONING", "TOTAL", "COST"):
        table.add_column(column, justify="left" if column in names[:3] else "right")
    currency = report["currency"]
    for r in report["rows"]:
        table.add_row(
            r["day"],
            _escape(r["job_id"]),
            _escape(str(r["model"] or "-")),
            *(
                f"{r[n]:,}"
                for n in (
                    "calls",
                    "runs",
                    "prompt_tokens",
                    "cached_tokens",
                    "completion_tokens",
                    "reasoning_tokens",
                    "total_tokens",
                )
            ),
            cost_text(r["cost"], currency),
        )
    _console().print(table)
    total = report["total"]
    cost = cost_text(total["cost"], currency)
    if total["cost_unknown"]:
        cost += f" (no price for {', '.join(total['cost_unknown'])})"
    click.echo(
        f"total: {total['calls']:,} calls, {total['total_tokens']:,} tokens, {cost} "
        f"(prices as of {report['prices_as_of']})"
    )


@main.command()
@click.option("--database-url", help=_DB_HELP)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8008, show_default=True, help="Port to listen on.")
@click.option("--read-only", is_flag=True, help="Hide every action; refuse state changes.")
def ui(database_url: str | None, host: str, port: int, read_only: bool) -> None:
    """Serve the web dashboard (any host but loopback needs $ENGINE_UI_TOKEN)."""
    # Imported here: Starlette and uvicorn cost every other command nothing.
    from . import ui as dashboard

    try:
        dashboard.serve(database_url, host, port, read_only)
    except EngineError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        sys.exit(130)


@main.group()
def db() -> None:
    """Manage the engine's database schema."""


@db.command()
@click.option("--database-url", help=_DB_HELP)
def upgrade(database_url: str | None) -> None:
    """Bring the schema to head (Alembic migrations)."""
    _run(lambda: _with_engine(database_url, lambda e: e.upgrade()))
    click.echo("database is at head")


# -- rendering ------------------------------------------------------------------------------------


def print_run(
    view: dict[str, Any], logs: list[dict[str, Any]], console: Console | None = None
) -> None:
    from rich.tree import Tree

    console = console or _console()
    created = _parse(view["created_at"])
    console.print(
        f"[bold]{view['id']}[/bold]  {view['job_id']}  {_status(view['status'])}  "
        f"created {_short_time(view['created_at'])}  "
        f"{_duration(view['started_at'], view['completed_at'])}"
    )
    if view.get("waiting_for"):
        console.print(f"waiting for: {view['waiting_for']['summary']}", markup=False)
    _print_links(view, console)
    tree = Tree("[bold]tasks[/bold]")
    _add_tasks(tree, view["tasks"])
    console.print(tree)
    if view["output"] is not None:
        console.print(f"output: {_short(view['output'], 300)}")
    if view["error"]:
        console.print(
            f"[red]error: {view['error'].get('type')}: {view['error'].get('message')}[/red]"
        )
    if logs:
        console.print("[bold]logs[/bold]")
        for line in logs:
            offset = (line["created_at"] - created).total_seconds() if created else 0.0
            fields = f" {_short(line['fields'], 120)}" if line["fields"] else ""
            console.print(
                f"  +{offset:7.3f}s {line['level']:<7} {line['message']}{fields}", markup=False
            )


# `runs show` lists this many child runs; `--json` lists them all.
_CHILDREN_SHOWN = 20


def _print_links(view: dict[str, Any], console: Console) -> None:
    """The run's parent and children (io.invoke), each by id, so either is one `show` away."""
    if view.get("parent_run_id"):
        task = f" (task {view['parent_task']})" if view.get("parent_task") else ""
        console.print(f"parent run: {view['parent_run_id']}{task}", markup=False)
    children = view.get("child_runs") or []
    if not children:
        return
    counts = Counter(child["status"] for child in children)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    console.print(f"child runs: {len(children)} ({summary})", markup=False)
    for child in children[:_CHILDREN_SHOWN]:
        console.print(
            f"  {child['id']}  {child['job_id']}  {child['status']}  task {child['task']}",
            markup=False,
        )
    if len(children) > _CHILDREN_SHOWN:
        console.print(f"  ... {len(children) - _CHILDREN_SHOWN} more (--json lists every one)")


def _print_recoveries(row: dict[str, Any], console: Console | None = None) -> None:
    """How often the run was executed again after losing an execution (engine.recovery)."""
    lost = row.get("lost_executions") or []
    if not row.get("recoveries") and not lost:
        return
    console = console or _console()
    console.print(f"recoveries: {row.get('recoveries', 0)}  (lost executions: {len(lost)})")
    for e in lost:
        console.print(
            f"  attempt {e.get('attempt')} on worker {e.get('worker')} lost at {e.get('lost_at')}",
            markup=False,
        )


def _add_tasks(tree: Tree, tasks: list[dict[str, Any]]) -> None:
    from rich.markup import escape as _escape

    from . import views

    for task in tasks:
        label = (
            f"{task['key']} [dim]{task['name']}[/dim] {_status(task['status'])} "
            f"x{task['attempts']} {_duration(task['started_at'], task['completed_at'])}"
        )
        error = task["error"]
        if error:
            message = _escape(_short(error.get("message"), 100))
            label += f" [red]{error.get('type')}: {message}[/red]"
        elif task["output"] is not None:
            label += f" [dim]→ {_escape(_short(task['output'], 80))}[/dim]"
        if task.get("usage") and task["usage"].get("calls"):
            from .usage import summary_text

            label += f" [magenta]{_escape(summary_text(task['usage']))}[/magenta]"
        for line in views.attempt_lines(task):
            label += f"\n  [dim]{_escape(_short(line, 160))}[/dim]"
        _add_tasks(tree.add(label), task["children"])


def _printable(value: Any) -> Any:
    """What was recorded, safe to print: text with a lone surrogate or a NUL escaped, and a
    NaN or Infinity (stored before values were checked) as text, so `--json` stays JSON."""
    if isinstance(value, str):
        from . import codec

        return codec.escape_text(value)
    if isinstance(value, float) and value - value != 0:
        return repr(value)
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_printable(v) for v in value]
    return value


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(start: str | None, end: str | None) -> str:
    a, b = _parse(start), _parse(end)
    if not a or not b:
        return ""
    seconds = (b - a).total_seconds()
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else f"{seconds:.1f}s"
