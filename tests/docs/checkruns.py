"""`python checkruns.py TRIGGERED DEADLINE`: every run a document's blocks triggered ends up in the
status its block expects (COMPLETED unless marked `expect STATUS (why)`) within DEADLINE seconds.

It runs where the document's last block left the reader (its directory and exported variables),
so it reads the database their `engine` commands used. TRIGGERED holds one `RUN_ID STATUS` line
per run (see session.py). A run that ends in another status, or is still elsewhere at the
deadline, fails it, with the run as `engine runs show --json` prints it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from engine import Engine

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELED"})
POLL = 0.2  # seconds between two looks at the runs still pending


async def check(expected: dict[str, str], deadline: float) -> list[str]:
    """The failures, one per run (none: every run is as expected)."""
    failures: list[str] = []
    pending = dict(expected)
    async with Engine() as engine:
        while pending:
            for run_id, want in list(pending.items()):
                status = (await engine.get_run(run_id))["status"]
                if status == want:
                    print(f"run {run_id}: {status}")
                elif status in FINAL or time.monotonic() > deadline:
                    still = "is" if status in FINAL else "is still"
                    shown = json.dumps(await engine.show_run(run_id), indent=2, default=str)
                    failures.append(f"run {run_id} {still} {status}; expected {want}:\n{shown}")
                else:
                    continue
                del pending[run_id]
            if pending:
                await asyncio.sleep(POLL)
    return failures


def main() -> int:
    triggered, seconds = Path(sys.argv[1]), float(sys.argv[2])
    expected: dict[str, str] = {}
    for line in triggered.read_text().splitlines():
        if line.strip():
            run_id, status = line.split()
            expected[run_id] = status
    failures = asyncio.run(check(expected, time.monotonic() + seconds))
    for failure in failures:
        print(f"doc-test: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
