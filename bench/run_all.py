"""Runs every benchmark in turn (each in its own process), passing `--db` through.

    python bench/run_all.py [--db sqlite|postgres|both] [--only task_write,replay,...]

Each script prints its own raw floor (measured in the same run) and its table; see
bench/README.md. The whole suite takes about 8 minutes for both databases on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("task_write", "replay", "throughput", "latency", "memory")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--only", default=",".join(SCRIPTS), help="comma-separated subset")
    args = p.parse_args()
    failed = []
    for name in args.only.split(","):
        if name not in SCRIPTS:
            p.error(f"unknown benchmark {name!r}: use {', '.join(SCRIPTS)}")
        started = time.perf_counter()
        code = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py"), "--db", args.db])
        print(f"[bench_{name}: exit {code}, {time.perf_counter() - started:.0f} s]\n", flush=True)
        if code:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
