"""`engine schedules list/pause/resume`: the cron schedules workers registered."""

from __future__ import annotations

import json

import click

from .cli_support import DB_HELP, console, run, short_time, with_engine


@click.group()
def schedules() -> None:
    """Cron schedules of jobs: list them, pause and resume them."""


@schedules.command("list")
@click.option("--job", "job_id", default=None, help="Only this job's schedules.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--database-url", help=DB_HELP)
def list_schedules(job_id: str | None, as_json: bool, database_url: str | None) -> None:
    """List each schedule: job, cron expression, timezone, next fire times, paused."""
    from rich.markup import escape
    from rich.table import Table

    listed = run(lambda: with_engine(database_url, lambda e: e.schedules(job_id), read=True))
    if as_json:
        click.echo(json.dumps(listed, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("JOB", "SCHEDULE", "TIMEZONE", "NEXT (UTC)", "THEN", "PAUSED", "LAST TICK"):
        table.add_column(column, no_wrap=column in ("JOB", "SCHEDULE"))
    for s in listed:
        upcoming = s["next_fire_times"]
        table.add_row(
            escape(s["job_id"]),
            escape(s["expression"]),
            escape(s["timezone"]),
            short_time(upcoming[0]) if upcoming else "-",
            ", ".join(short_time(t) for t in upcoming[1:]) or "-",
            "yes" if s["paused"] else "no",
            short_time(s["last_tick_at"]),
        )
    console().print(table if listed else "no schedules registered")


@schedules.command("pause")
@click.argument("job_id")
@click.option(
    "--schedule", "expression", default=None, help="Only this cron expression (default: all)."
)
@click.option("--database-url", help=DB_HELP)
def pause(job_id: str, expression: str | None, database_url: str | None) -> None:
    """Stop JOB_ID's schedules from firing until resumed."""
    changed = run(
        lambda: with_engine(database_url, lambda e: e.pause_schedule(job_id, expression), read=True)
    )
    click.echo(f"paused {changed} schedule(s) of {job_id}")


@schedules.command("resume")
@click.argument("job_id")
@click.option(
    "--schedule", "expression", default=None, help="Only this cron expression (default: all)."
)
@click.option("--database-url", help=DB_HELP)
def resume(job_id: str, expression: str | None, database_url: str | None) -> None:
    """Fire JOB_ID's paused schedules again, from their next tick (missed ones are skipped)."""
    changed = run(
        lambda: with_engine(
            database_url, lambda e: e.resume_schedule(job_id, expression), read=True
        )
    )
    click.echo(f"resumed {changed} schedule(s) of {job_id}")
