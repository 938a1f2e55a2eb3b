"""What every `engine` command shares: how it opens the database, how it fails, and how it prints
times. Only click is imported here; each command imports what it needs when it runs."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .exceptions import EngineError

if TYPE_CHECKING:
    from rich.console import Console

    from .client import Engine

T = TypeVar("T")

DB_HELP = "Database URL (default: $ENGINE_DATABASE_URL, else sqlite+aiosqlite:///engine.db)."


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def run(make: Callable[[], Awaitable[T]]) -> T:
    """Runs a coroutine; a user-caused error becomes one line on stderr and exit code 1."""
    import asyncio

    try:
        return asyncio.run(make())  # type: ignore[arg-type]
    except EngineError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        sys.exit(130)


async def with_engine(
    url: str | None, use: Callable[[Engine], Awaitable[T]], *, read: bool = False
) -> T:
    """Calls `use` with an `Engine` on the URL; `read` commands refuse a missing SQLite file
    instead of creating it."""
    from .client import Engine

    engine = Engine(url)
    missing = engine.store.missing_file() if read else None
    if missing:
        await engine.close()
        raise EngineError(
            f"no engine database at {missing}: start a worker (`engine run APP`) or run "
            "`engine db upgrade` there first, or pass --database-url"
        )
    try:
        return await use(engine)
    finally:
        await engine.close()


class EngineGroup(click.Group):
    """The top-level group: click's own usage errors (a missing argument, an unknown option or
    command, a bad value) end like every other error here, one `error:` line and exit 1."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            fail(_usage_message(exc))
        except click.ClickException as exc:
            fail(_one_line(exc.format_message()))
        except click.Abort:
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)


def _usage_message(exc: click.UsageError) -> str:
    message = _one_line(exc.format_message())
    if exc.ctx is not None:
        message += f" (see `{exc.ctx.command_path} --help`)"
    return message


def _one_line(message: str) -> str:
    message = " ".join(message.split()).rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    return message


def console() -> Console:
    from rich.console import Console

    # Piped output has no terminal width; rich would fold ids and keys at 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def short_time(value: str | None) -> str:
    parsed = parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S") if parsed else "-"
