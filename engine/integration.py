"""The seam between a job's `io` and an integration: `@job(integrations={"openai": OpenAI()})`.

An integration is any object with an `id`, a `bind(io)` that returns what the job sees as
`io.<name>` during one execution, and a `register_pollers()` that a worker calls when it starts.
A job reaches the bound object as `io.<name>` (typed `Any`, so a user's `mypy --strict` accepts
`io.openai.chat.completions.create(...)`) or as `io.use(integration)`, typed as what `bind`
returns. The names an integration may take are the ones `IO` does not already use.
"""

from __future__ import annotations

import keyword
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from .exceptions import EngineError

if TYPE_CHECKING:
    from .io import IO

T_co = TypeVar("T_co", covariant=True)


@runtime_checkable
class Integration(Protocol[T_co]):
    """What `@job(integrations={name: ...})` accepts: something that binds to a run's `io`."""

    id: str

    def bind(self, io: IO) -> T_co:
        """The object a job sees as `io.<name>` (and `io.use(self)`) during one execution."""
        ...

    def register_pollers(self) -> None:
        """Registers the background pollers its waiting calls use (in `engine.pollers`)."""
        ...


@cache
def reserved_names() -> frozenset[str]:
    """Every public name of `io` itself (methods and attributes), read from the IO class, so an
    integration can never hide one, however IO grows."""
    from .io import IO

    names = {name for name in dir(IO) if not name.startswith("_")}
    for cls in IO.__mro__:
        names.update(n for n in getattr(cls, "__annotations__", {}) if not n.startswith("_"))
    return frozenset(names)


def check(job_id: str, name: Any, integration: Any) -> None:
    """Refuses an integration `@job` cannot bind under `name`, with what to do instead."""
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise EngineError(
            f"@job({job_id!r}) integrations key {name!r}: use a Python identifier, e.g. 'openai'"
        )
    if name.startswith("_") or name in reserved_names():
        raise EngineError(
            f"@job({job_id!r}) integrations key {name!r} is taken by io itself (io.{name}); "
            f"name the integration something else, e.g. {name.strip('_') + '_api'!r}. "
            f"Reserved: {', '.join(sorted(reserved_names()))}, and names starting with '_'"
        )
    if not isinstance(integration, Integration):
        raise EngineError(
            f"@job({job_id!r}) integrations[{name!r}] is not an integration (it needs `id`, "
            "`bind(io)` and `register_pollers()`): pass e.g. "
            "integrations.openai.OpenAI(id='openai')"
        )
