"""The README's quick start installs the package without the `test` extra: the OpenAI
integration must import with only what the `openai` package brings (newer releases ship on
httpx2, not httpx; httpx comes with the test extra only)."""

from __future__ import annotations

import subprocess
import sys


def test_the_openai_integration_imports_without_httpx() -> None:
    code = (
        "import sys\n"
        "sys.modules['httpx'] = None  # as if not installed: importing it raises ImportError\n"
        "import integrations.openai, integrations.openai.streaming\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
