"""The SQL of a document, statement by statement, against a database with real rows."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

from docs.blocks import Block
from sqlalchemy.engine import make_url


@dataclass(frozen=True)
class Statement:
    label: str  # the `--` comment the statement is under ("" when none)
    sql: str


@dataclass(frozen=True)
class Answer:
    statement: Statement
    columns: list[str]
    rows: list[tuple[Any, ...]]


def statements(block: Block, run_id: str) -> list[Statement]:
    """The block's statements; `RUN_ID` is a real run's id. A comment labels the statements
    after it, up to the next comment."""
    found: list[Statement] = []
    label, current = "", list[str]()
    for line in block.text.replace("RUN_ID", run_id).splitlines():
        stripped = line.strip()
        if stripped.startswith("--") and not current:
            label = stripped.lstrip("- ").strip()
            continue
        if stripped:
            current.append(line)
        if stripped.endswith(";"):
            found.append(Statement(label, "\n".join(current)))
            current = []
    assert not current, f"{block.name}: a statement without its closing ';': {current}"
    return found


def run_sqlite(url: str, todo: list[Statement]) -> list[Answer]:
    path = make_url(url).database
    assert path, url
    # Read-only, as the page tells readers to use these queries.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        answers = []
        for statement in todo:
            cursor = conn.execute(statement.sql)
            columns = [d[0] for d in cursor.description or ()]
            answers.append(Answer(statement, columns, cursor.fetchall()))
        return answers
    finally:
        conn.close()


async def run_postgres(url: str, todo: list[Statement]) -> list[Answer]:
    import asyncpg

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        answers = []
        async with conn.transaction(readonly=True):
            for statement in todo:
                records = await conn.fetch(statement.sql, timeout=30)
                columns = list(records[0].keys()) if records else []
                answers.append(Answer(statement, columns, [tuple(r.values()) for r in records]))
        return answers
    finally:
        await conn.close()
