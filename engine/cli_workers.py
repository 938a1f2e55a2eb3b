"""`engine jobs list` and `engine workers list`: which jobs exist, which versions, and which live
workers serve them; and the warning `engine trigger` gives when none serves a run."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from .cli_support import DB_HELP, console, run, short_time, with_engine

if TYPE_CHECKING:
    from .client import Engine


async def unserved(engine: Engine, job_id: str, run_id: str) -> str | None:
    """Why the run may wait for a worker, or None when a live worker serves its version."""
    version = (await engine.get_run(run_id))["job_version"]
    listed = {job["job_id"]: job for job in await engine.jobs()}
    served = [v["version"] for v in listed.get(job_id, {}).get("versions", []) if v["live_workers"]]
    if version in served:
        return None
    others = f" (live workers serve version {', '.join(served)})" if served else ""
    return (
        f"no live worker serves job {job_id!r} version {version!r}{others}: the run is queued "
        "until one starts (`engine run APP`; `engine workers list` shows the live ones)"
    )


@click.group()
def jobs() -> None:
    """Registered jobs, their versions, and the live workers serving them."""


@jobs.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--database-url", help=DB_HELP)
def list_jobs(as_json: bool, database_url: str | None) -> None:
    """List each job's registered versions, who serves them, and where a trigger goes."""
    from rich.markup import escape as _escape
    from rich.table import Table

    listed = run(lambda: with_engine(database_url, lambda e: e.jobs(), read=True))
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("JOB", "VERSION", "REGISTERED", "LIVE WORKERS", "TRIGGER GOES TO"):
        table.add_column(column, no_wrap=column == "JOB")
    for job in listed:
        for entry in job["versions"]:
            ids = ", ".join(entry["worker_ids"])
            table.add_row(
                _escape(job["job_id"]),
                _escape(entry["version"]),
                short_time(entry["registered_at"]),
                f"{entry['live_workers']}" + (f" ({_escape(ids)})" if ids else ""),
                "←" if entry["version"] == job["default_version"] else "",
            )
    console().print(table if listed else "no jobs registered")


@click.group()
def workers() -> None:
    """The live workers: `engine run` processes whose heartbeat has not lapsed."""


@workers.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--database-url", help=DB_HELP)
def list_workers(as_json: bool, database_url: str | None) -> None:
    """List the live workers, the job versions each serves, and their heartbeats."""
    from rich.markup import escape as _escape
    from rich.table import Table

    live = run(lambda: with_engine(database_url, lambda e: e.workers(), read=True))
    if as_json:
        click.echo(json.dumps(live, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("WORKER", "HOST", "PID", "JOBS", "STARTED", "LAST HEARTBEAT", "EXPIRES"):
        table.add_column(column, no_wrap=column == "WORKER")
    for w in live:
        table.add_row(
            _escape(w["worker_id"]),
            _escape(w["host"] or ""),
            "" if w["pid"] is None else str(w["pid"]),
            _escape(", ".join(w["jobs"])),
            short_time(w["started_at"]),
            short_time(w["last_seen_at"]),
            short_time(w["expires_at"]),
        )
    console().print(table if live else "no live workers")
