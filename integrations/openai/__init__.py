"""The OpenAI integration: `@job(integrations={"openai": OpenAI()})`, then `io.openai.<path>(key,
*ids, **params)` in the job, each call one recorded task (see docs/integrations/openai.md)."""

from .client import OpenAI
from .errors import MissingAPIKeyError, OpenAIAPIError

__all__ = ["MissingAPIKeyError", "OpenAI", "OpenAIAPIError"]
