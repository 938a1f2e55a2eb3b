"""Which version of a job a trigger goes to, and the natural order of version strings.

The rule (docs/concepts.md, "Versions"): an explicit version wins (it must be registered);
else the version of the job's code in the triggering process, if it defines the job; else the
highest version served by a live worker; else the highest registered version. "Highest" is
natural order: dotted numbers compare as numbers (1.9 < 1.10 < 2), other parts as text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_PARTS = re.compile(r"\d+|\D+")


def version_key(version: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """A sort key in natural order: runs of digits as numbers, everything else as text.

    Numbers sort before text at the same place ("1.0" < "1.0a"); the version itself breaks
    ties between spellings of one number ("01" and "1").
    """
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in _PARTS.findall(version))
    return parts, version


def highest(versions: Iterable[str]) -> str | None:
    return max(versions, key=version_key, default=None)


def live_versions(job_id: str, workers: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """version -> ids of the live workers that serve it (their `jobs` hold "job@version")."""
    served: dict[str, list[str]] = {}
    prefix = f"{job_id}@"
    for worker in workers:
        for key in worker.get("jobs") or ():
            if isinstance(key, str) and key.startswith(prefix):
                served.setdefault(key[len(prefix) :], []).append(str(worker["worker_id"]))
    return served


def default_version(registered: Iterable[str], served: Iterable[str]) -> str | None:
    """Where a trigger without a version goes when the triggering process lacks the job's
    code: the highest version a live worker serves, else the highest registered one."""
    registered = list(registered)
    live = [v for v in served if v in registered]
    return highest(live) or highest(registered)
