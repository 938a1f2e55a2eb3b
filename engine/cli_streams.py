"""`engine runs stream RUN_ID NAME`: follow a run's live output until the run ends."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from .cli_support import DB_HELP, fail, run, with_engine

if TYPE_CHECKING:
    from .client import Engine
    from .streams import StreamChunk


@click.command("stream")
@click.argument("run_id")
@click.argument("name")
@click.option(
    "--after",
    type=click.IntRange(min=0),
    default=None,
    help="Start after this seq (the last one a previous reader saw); default: the start.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per chunk: seq, data, task, attempt, restart, written_at.",
)
@click.option("--database-url", help=DB_HELP)
def stream_command(
    run_id: str, name: str, after: int | None, as_json: bool, database_url: str | None
) -> None:
    """Print a run's stream NAME as it is written, until the run ends.

    Text chunks are printed as they are, one after the other (tokens make up the text); other
    chunks as one JSON line each. Exits 1 if the run ended FAILED or CANCELED."""

    async def follow(engine: Engine) -> str:
        ended_line = True
        async for chunk in engine.read_stream(run_id, name, after=after):
            if as_json:
                click.echo(json.dumps(chunk.as_json()))
            else:
                ended_line = _print_text(chunk, ended_line)
            sys.stdout.flush()
        if not ended_line:
            click.echo()
        return str((await engine.get_run(run_id))["status"])

    status = run(lambda: with_engine(database_url, follow, read=True))
    if status in ("FAILED", "CANCELED"):
        fail(f"run {run_id} ended {status} (`engine runs show {run_id}` says why)")


def _print_text(chunk: StreamChunk, ended_line: bool) -> bool:
    """Prints one chunk for people; returns whether the output now ends a line."""
    if chunk.restart:
        # On stderr: stdout stays exactly what the run wrote.
        if not ended_line:
            click.echo()
            ended_line = True
        click.echo(
            f"--- task {'/'.join(chunk.task)!r} runs again (attempt {chunk.attempt}): the "
            "chunks it wrote before were cut off ---",
            err=True,
        )
    if isinstance(chunk.data, str):
        click.echo(chunk.data, nl=False)
        return chunk.data.endswith("\n") or (ended_line and not chunk.data)
    if not ended_line:
        click.echo()
    click.echo(json.dumps(chunk.data))
    return True
