"""The OpenAI integration: `@job(integrations={"openai": OpenAI()})`, then `io.openai.<path>(key,
*ids, **params)` in the job, each call one recorded task (see docs/integrations/openai.md)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import OpenAI
    from .errors import MissingAPIKeyError, OpenAIAPIError

# Imported on first use: the openai SDK (and the engine behind the client) cost about a second
# of CPU, which `python -m integrations.openai.testing` (the fake server, stdlib only) and
# anything else importing a submodule would otherwise pay through this package.
_LAZY = {"OpenAI": ".client", "MissingAPIKeyError": ".errors", "OpenAIAPIError": ".errors"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = ["MissingAPIKeyError", "OpenAI", "OpenAIAPIError"]
