"""The web dashboard (`engine ui`): runs, task trees, timelines, live updates and actions.

Imported only by `engine ui` and `engine run --ui`, so the rest of the CLI never pays for
Starlette/uvicorn.
"""

from __future__ import annotations

from .app import create_app
from .server import serve, serve_beside

__all__ = ["create_app", "serve", "serve_beside"]
