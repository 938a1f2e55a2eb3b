"""`engine trigger --payload`: JSON on the command line, `@FILE` or `-` (stdin).

A payload larger than the command line allows goes through a file or a pipe; every way of
passing it is checked by the same rules (engine.codec.parse_input), and a failure names where
the JSON came from.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import codec
from .exceptions import EngineError

EXAMPLE = "pass e.g. --payload '{\"n\": 1}', --payload @payload.json or --payload - (stdin)"


def read_payload(value: str) -> Any:
    """The payload `--payload VALUE` stands for."""
    if value == "-":
        source, text = "the payload on stdin (--payload -)", sys.stdin.read()
    elif value.startswith("@"):
        path = Path(value[1:])
        source = f"payload file {str(path)!r} (--payload {value})"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise EngineError(f"{source} does not exist: {EXAMPLE}") from None
        except UnicodeDecodeError:
            raise EngineError(f"{source} is not UTF-8 text: save the JSON as UTF-8") from None
        except OSError as exc:
            raise EngineError(f"{source} cannot be read ({exc.strerror})") from None
    else:
        source, text = "--payload", value
    try:
        return codec.parse_input(text, source)
    except json.JSONDecodeError as exc:
        raise EngineError(
            f"{source} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
            f"{EXAMPLE}"
        ) from None
