"""SQLAlchemy's asyncio engine, without the ORM session its package imports.

`sqlalchemy.ext.asyncio`'s `__init__` imports its ORM session (`AsyncSession`) and with it all
of `sqlalchemy.orm`: about a quarter of `engine runs show`'s start-up (issue 10), for a class
the engine never uses. The engine needs only the package's `engine` submodule, so the package
is registered without running its `__init__`, and runs it on first use of any other name in it:
`from sqlalchemy.ext.asyncio import AsyncSession` elsewhere in the process still works.
"""

from __future__ import annotations

import importlib.util
import pkgutil
import sys
from typing import Any

_PACKAGE = "sqlalchemy.ext.asyncio"


def _defer_package_init() -> None:
    if _PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or spec.loader is None:  # pragma: no cover - SQLAlchemy without asyncio
        return
    package = importlib.util.module_from_spec(spec)
    submodules = {m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)}

    def __getattr__(name: str) -> Any:
        if name in submodules:
            # `from . import exc` inside the package: let the import system load the submodule.
            raise AttributeError(name)
        # The first name the package has only once initialised: initialise it now (its
        # submodules already imported are reused) and answer from it.
        package.__dict__.pop("__getattr__", None)
        spec.loader.exec_module(package)  # type: ignore[union-attr]
        return getattr(package, name)

    package.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[_PACKAGE] = package


_defer_package_init()

from sqlalchemy.ext.asyncio.engine import create_async_engine  # noqa: E402
from sqlalchemy.util import concurrency  # noqa: E402

# What the package's `__init__` does besides its imports: load greenlet, failing here (with
# SQLAlchemy's message) rather than on the first query when it is missing.
concurrency._concurrency_shim._initialize()

__all__ = ["create_async_engine"]
