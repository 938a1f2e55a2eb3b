"""`engine events send/list` and `engine runs signal`: events for every run that waits for them
(and the jobs they start), signals for one run. See docs/triggers.md."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from .cli_support import DB_HELP, console, fail, run, short_time, with_engine
from .exceptions import EngineError

if TYPE_CHECKING:
    from .client import Engine
    from .events import SentEvent, SentSignal

_PAYLOAD_HELP = "The payload: JSON, @FILE (a JSON file) or - (JSON on stdin). Default: {}."


def _payload(value: str | None) -> Any:
    from .cli_payload import read_payload

    try:
        return read_payload(value) if value is not None else None
    except EngineError as exc:
        fail(exc.message)


@click.group()
def events() -> None:
    """Send events (they wake the runs waiting for them and start on_event jobs) and list them."""


@events.command("send")
@click.argument("name")
@click.option("--payload", default=None, help=_PAYLOAD_HELP)
@click.option(
    "--id",
    "event_id",
    default=None,
    help="A dedupe key: an event id sent before is neither stored nor delivered again.",
)
@click.option("--json", "as_json", is_flag=True, help="Print what the event did as JSON.")
@click.option("--database-url", help=DB_HELP)
def send_event(
    name: str, payload: str | None, event_id: str | None, as_json: bool, database_url: str | None
) -> None:
    """Send event NAME and print its id."""
    data = _payload(payload)

    async def send(engine: Engine) -> SentEvent:
        return await engine.send_event(name, data, id=event_id)

    sent = run(lambda: with_engine(database_url, send))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "id": sent.id,
                    "name": sent.name,
                    "created": sent.created,
                    "woke": sent.woke,
                    "started": sent.started,
                },
                indent=2,
            )
        )
        return
    if not sent.created:
        click.echo(f"event {sent.id} was sent before: nothing delivered again", err=True)
    click.echo(sent.id)


@events.command("list")
@click.option("--name", default=None, help="Only events of this name.")
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(min=1), help="At most N events."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.option("--database-url", help=DB_HELP)
def list_events(name: str | None, limit: int, as_json: bool, database_url: str | None) -> None:
    """List sent events, newest first, with the runs each woke and started."""
    from rich.markup import escape
    from rich.table import Table

    rows = run(lambda: with_engine(database_url, lambda e: e.events(name, limit), read=True))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "SENT", "WOKE", "STARTED", "PAYLOAD"):
        table.add_column(column)
    for row in rows:
        text = json.dumps(row["payload"])
        table.add_row(
            escape(row["id"]),
            escape(row["name"]),
            short_time(row["sent_at"]),
            str(row["woke"]),
            str(row["started"]),
            escape(text if len(text) <= 60 else text[:59] + "…"),
        )
    console().print(table if rows else "no events")


@click.command("signal")
@click.argument("run_id")
@click.argument("name")
@click.option("--payload", default=None, help=_PAYLOAD_HELP)
@click.option(
    "--id",
    "signal_id",
    default=None,
    help="A dedupe key: a signal with an id the run already has is not sent again.",
)
@click.option("--database-url", help=DB_HELP)
def signal_run(
    run_id: str, name: str, payload: str | None, signal_id: str | None, database_url: str | None
) -> None:
    """Send signal NAME to run RUN_ID (its io.wait_for_signal gets the payload)."""
    data = _payload(payload)

    async def send(engine: Engine) -> SentSignal:
        return await engine.signal(run_id, name, data, id=signal_id)

    sent = run(lambda: with_engine(database_url, send, read=True))
    if not sent.created:
        click.echo(f"run {run_id} already has signal {sent.id}: nothing sent again", err=True)
    elif sent.woke:
        click.echo(f"signaled {run_id}: its wait for {name!r} is over")
    else:
        click.echo(f"signaled {run_id}: kept until it waits for {name!r}")
