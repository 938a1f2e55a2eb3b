"""CI runs exactly the test command the README gives a newcomer (so what CI proves is what a
reader runs, xdist workers included)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Run the tests", 1)[1]
    block = re.search(r"```bash\n(.+?)\n```", section, re.S)
    assert block, "README.md: no bash block after 'Run the tests'"
    return block[1].strip()


def test_ci_runs_the_readmes_test_command_exactly() -> None:
    command = _readme_test_command()
    assert "pytest" in command, command
    ci = (ROOT / ".ci" / "run").read_text()
    assert f'"{command}"' in ci, f".ci/run does not run the README's test command:\n{command}"
