"""The web dashboard (`engine ui`): runs, task trees, timelines, live updates and actions.

Imported only by the `ui` command, so the rest of the CLI never pays for Starlette/uvicorn.
"""

from __future__ import annotations

from .app import create_app
from .server import serve

__all__ = ["create_app", "serve"]
