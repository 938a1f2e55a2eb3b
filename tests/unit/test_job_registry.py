"""Declaring jobs: one id per job in a process, and integration names that cannot hide io's."""

from __future__ import annotations

import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import unique_id

from engine import IO, Context, EngineError, Integration, job
from engine.app import load_app
from engine.integration import reserved_names
from engine.jobs import registry


class Echo:
    """The smallest integration: `io.<name>` is a string naming the run."""

    def __init__(self, id: str = "echo") -> None:
        self.id = id

    def bind(self, io: IO) -> str:
        return f"echo for {io.run_id}"

    def register_pollers(self) -> None:
        pass


def test_two_jobs_with_one_id_are_refused_naming_both_functions() -> None:
    job_id = unique_id("dup")

    @job(id=job_id)
    async def first(payload: Any, io: IO, ctx: Context) -> None:
        return None

    with pytest.raises(EngineError) as caught:

        @job(id=job_id)
        async def second(payload: Any, io: IO, ctx: Context) -> None:
            return None

    message = str(caught.value)
    here = f"{__name__}:test_two_jobs_with_one_id_are_refused_naming_both_functions.<locals>"
    assert message == (
        f"two jobs have the id {job_id!r} (version 1): {here}.first and {here}.second; give "
        "each job its own id (or, to keep an old version's code running, its own version=)"
    )
    # The first declaration is the one that stays.
    known = registry.get(job_id)
    assert known is not None and known.fn is first.fn


def test_two_versions_of_one_job_are_two_jobs() -> None:
    """An app may keep an old version's code to drain its runs: `id@1` and `id@2` both serve,
    and a trigger from this process goes to the highest version it defines."""
    job_id = unique_id("versions")

    @job(id=job_id, version="1.10")
    async def newer(payload: Any, io: IO, ctx: Context) -> None:
        return None

    @job(id=job_id, version="1.9")
    async def older(payload: Any, io: IO, ctx: Context) -> None:
        return None

    assert registry.get(job_id) is newer
    assert registry.get(job_id, "1.9") is older
    assert registry.get(job_id, "2") is None
    assert {j.key for j in registry.all() if j.id == job_id} == {f"{job_id}@1.9", f"{job_id}@1.10"}


@pytest.fixture
def app_module(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [n for n in sys.modules if n.startswith("reloaded_app")]:
            del sys.modules[name]


def test_the_same_function_declared_again_is_not_a_duplicate(app_module: Path) -> None:
    """A module reloaded, or one file imported under two names: the same job, declared again."""
    job_id = unique_id("reloaded")
    source = textwrap.dedent(f"""
        from engine import job

        @job(id={job_id!r})
        async def reloaded(payload, io, ctx):
            return None
    """)
    (app_module / "reloaded_app.py").write_text(source)
    module = importlib.import_module("reloaded_app")
    importlib.reload(module)
    assert registry.get(job_id) is module.reloaded
    # The same file loaded as an app (another module name) is still the same job.
    load_app(str(app_module / "reloaded_app.py"))
    assert registry.get(job_id) is not None


def test_two_files_declaring_one_id_are_refused(app_module: Path) -> None:
    job_id = unique_id("twofiles")
    for name in ("reloaded_app_a", "reloaded_app_b"):
        (app_module / f"{name}.py").write_text(
            f"from engine import job\n\n@job(id={job_id!r})\n"
            "async def same_name(payload, io, ctx):\n    return None\n"
        )
    importlib.import_module("reloaded_app_a")
    with pytest.raises(EngineError, match=r"reloaded_app_a:same_name .* reloaded_app_b:same_name"):
        importlib.import_module("reloaded_app_b")


def test_reserved_integration_names_come_from_io_itself() -> None:
    names = reserved_names()
    # Methods, attributes set in IO.__init__, and the integration accessors.
    assert {"run_task", "wait", "background_poll", "poll", "call", "is_recorded"} <= names
    assert {"run_id", "logger", "use"} <= names
    assert all(not name.startswith("_") for name in names)


@pytest.mark.parametrize("name", ["run_id", "is_recorded", "use", "logger", "wait", "_private"])
def test_an_integration_named_like_io_is_refused(name: str) -> None:
    with pytest.raises(EngineError) as caught:

        @job(id=unique_id("clash"), integrations={name: Echo()})
        async def clash(payload: Any, io: IO, ctx: Context) -> None:
            return None

    message = str(caught.value)
    assert f"integrations key {name!r} is taken by io itself" in message
    assert "run_id" in message and "is_recorded" in message  # the reserved names are listed


@pytest.mark.parametrize("name", ["not an identifier", "class", ""])
def test_an_integration_name_must_be_an_identifier(name: str) -> None:
    with pytest.raises(EngineError, match="use a Python identifier"):
        job(id=unique_id("badname"), integrations={name: Echo()})


def test_an_object_without_bind_is_not_an_integration() -> None:
    with pytest.raises(EngineError, match=r"integrations\['echo'\] is not an integration"):
        job(id=unique_id("notint"), integrations={"echo": object()})  # type: ignore[dict-item]


def test_an_integration_satisfies_the_protocol() -> None:
    echo: Integration[str] = Echo()
    assert isinstance(echo, Integration)
