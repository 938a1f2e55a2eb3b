"""Issue 10, "a newcomer's first hour": the CLI's rough edges, each checked through the real CLI."""

from __future__ import annotations

import subprocess
import sys


def _modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return set(out.split())


def test_importing_the_cli_does_not_import_heavy_libraries() -> None:
    # Every `engine` command, `--help` included, pays for what `engine.cli` imports.
    loaded = _modules_after("import engine.cli")
    heavy = {"sqlalchemy", "pydantic", "rich", "alembic", "jsonschema", "openai", "asyncio"}
    assert not heavy & {name.split(".")[0] for name in loaded}
    assert not {"engine.client", "engine.schema", "engine.store", "engine.worker"} & loaded


def test_the_public_api_is_still_importable_from_engine() -> None:
    loaded = _modules_after("from engine import Engine, job, IO, Worker, RetryPolicy, clock")
    assert {"engine.client", "engine.jobs", "engine.io", "engine.worker", "engine.clock"} <= loaded
