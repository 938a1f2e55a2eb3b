"""CLI start-up: the wall time of `engine` commands, against a bare `python -c pass` floor.

    python bench/bench_cli.py [--repeat 11]

Each command runs `--repeat` times as a fresh process (the way a user types it); the median
wall time and the median CPU time (user + system: what the command costs when the machine is
busy with other work) are printed, each also minus the floor. `runs show` and `runs list` read
a throwaway SQLite file holding one completed run of three tasks. Targets (issue 10):
`--help` and `--version` <= 0.25 s, `runs show` <= 0.5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENGINE = str(BIN / "engine")
TARGETS = {"--help": 0.25, "--version": 0.25, "runs show ID": 0.5}


async def _make_run(url: str) -> str:
    from engine import IO, Context, Engine, Worker, job

    @job(id="bench-cli", version="1")
    async def small(payload: dict[str, int], io: IO, ctx: Context) -> dict[str, int]:
        total = 0
        for i in range(3):
            total += await io.run_task(f"step-{i}", lambda task, i=i: _value(i))
        return {"total": total}

    worker = Worker([small], url)
    running = asyncio.create_task(worker.run())
    async with Engine(url) as engine:
        run_id = await engine.trigger("bench-cli", {})
        await engine.wait_for(run_id, timeout=120)
    worker.stop()
    await running
    return run_id


async def _value(i: int) -> int:
    return i


def _medians(cmd: list[str], repeat: int, cwd: str) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system) of `cmd`, in seconds. On a busy
    machine the wall time includes waiting for a core; the CPU time mostly does not."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, capture_output=True, check=True, timeout=120)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=11, help="runs of each command (median shown)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="engine_bench_cli_") as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        run_id = asyncio.run(_make_run(url))
        show = [ENGINE, "runs", "show", run_id, "--database-url", url]
        commands = {
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
            "--help": [ENGINE, "--help"],
            "--version": [ENGINE, "--version"],
            "runs show ID": show,
            "runs show ID --json": [*show, "--json"],
            "runs list": [ENGINE, "runs", "list", "--database-url", url],
        }
        print(f"engine CLI start-up, median of {args.repeat} runs, SQLite")
        print(f"{'command':<24}{'wall s':>8}{'- floor':>9}{'cpu s':>8}{'- floor':>9}{'target':>8}")
        floor: tuple[float, float] | None = None
        for name, cmd in commands.items():
            wall, cpu = _medians(cmd, args.repeat, tmp)
            floor = floor or (wall, cpu)
            target = TARGETS.get(name)
            print(
                f"{name:<24}{wall:>8.3f}{wall - floor[0]:>9.3f}{cpu:>8.3f}{cpu - floor[1]:>9.3f}"
                f"{(f'{target:.2f}' if target else ''):>8}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
