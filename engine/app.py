"""Loads a user's app (a module path or a .py file) and returns the jobs it declares."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .exceptions import AppLoadError
from .jobs import Job, registry


def load_app(app: str) -> list[Job]:
    before = {job.key for job in registry.all()}
    try:
        if app.endswith(".py") or "/" in app or Path(app).is_file():
            _load_file(Path(app))
        else:
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            importlib.import_module(app)
    except AppLoadError:
        raise
    except ModuleNotFoundError as exc:
        raise AppLoadError(
            f"cannot import app {app!r}: {exc}. Pass a module path importable from here "
            "(e.g. myproject.jobs) or a .py file"
        ) from None
    except Exception as exc:
        raise AppLoadError(f"importing app {app!r} raised {type(exc).__name__}: {exc}") from exc
    jobs = [job for job in registry.all() if job.key not in before] or registry.all()
    if not jobs:
        raise AppLoadError(f"app {app!r} declares no jobs: decorate an async def with @job(...)")
    return jobs


def _load_file(path: Path) -> None:
    if not path.is_file():
        raise AppLoadError(f"app file {str(path)!r} does not exist")
    path = path.resolve()
    name = f"engine_app_{path.stem}"
    if name in sys.modules:
        return
    # Let the app import its neighbours, as `python path/to/app.py` would.
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AppLoadError(f"app file {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
