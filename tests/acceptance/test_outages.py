"""Real `engine run` workers ride out real database outages: every connection cut, new ones
refused, PostgreSQL restarted or stopped, backends terminated, the SQLite file locked past the
busy timeout. The worker stays alive, says once when the outage starts and once when it ends,
and every run completes without a restart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from faults import SQLiteLock, TcpProxy, pg_execute, private_pg, with_port  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

UNAVAILABLE = "database unavailable: "
REACHABLE = "database reachable again after "
STEPS = 40


def start_runs(procs: Any, url: str, tmp_path: Path, count: int, sleep: float) -> dict[str, Path]:
    """`count` runs of crash.py's many-tasks; each appends every step it executes to its file.
    Triggered before the worker starts, so they all run at once."""
    tmp_path.mkdir(exist_ok=True)
    runs = {}
    for i in range(count):
        log = tmp_path / f"run{i}.log"
        payload = {"log": str(log), "n": STEPS, "sleep": sleep}
        runs[procs.start(url, "many-tasks", payload, app="crash.py")] = log
    return runs


def executed(runs: dict[str, Path]) -> int:
    return sum(len(path.read_text().splitlines()) for path in runs.values() if path.exists())


def wait_more(procs: Any, runs: dict[str, Path], more: int, what: str, timeout: float = 60) -> None:
    """Waits until `more` further steps have executed (the worker is making progress)."""
    start = executed(runs)
    procs.wait_until(lambda: executed(runs) >= start + more, timeout, what)


def wait_completed(procs: Any, url: str, runs: dict[str, Path], timeout: float = 90) -> None:
    for run_id in runs:
        procs.wait_status(url, run_id, {"COMPLETED", "FAILED", "CANCELED"}, timeout=timeout)
        view = procs.view(url, run_id)
        assert view["status"] == "COMPLETED", (
            view["status"],
            view.get("error"),
            [(t["key"], t["status"], t.get("error")) for t in view["tasks"]][-3:],
        )
        assert view["output"] == {"count": STEPS}


def assert_each_step_once(runs: dict[str, Path]) -> None:
    keys = [f"t{i:02d}" for i in range(STEPS)]
    for run_id, path in runs.items():
        counts = procs_counts(path)
        assert sorted(counts) == keys, (run_id, sorted(counts))
        twice = {k: n for k, n in counts.items() if n != 1}
        assert not twice, f"run {run_id}: steps executed more than once: {twice}"


def procs_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        counts[line] = counts.get(line, 0) + 1
    return counts


def outage_lines(output: str) -> tuple[int, int]:
    return output.count(UNAVAILABLE), output.count(REACHABLE)


def assert_alive(worker: Any) -> None:
    assert worker.proc.poll() is None, f"worker exited {worker.proc.returncode}:\n{worker.output}"


def no_tracebacks(worker: Any) -> None:
    assert "Traceback" not in worker.output, worker.output


def settled(worker: Any) -> bool:
    unavailable, reachable = outage_lines(worker.output)
    return unavailable == reachable


def has(worker: Any, text: str, count: int = 1) -> Callable[[], bool]:
    return lambda: worker.output.count(text) >= count


# -- PostgreSQL through a proxy that cuts and refuses connections ------------------------------


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", 5432) as p:
        yield p


@pytest.mark.postgres
def test_connections_cut_and_refused(
    procs: Any, pg_head_url: str, proxy: TcpProxy, tmp_path: Path
) -> None:
    url = with_port(pg_head_url, proxy.port)
    # Leases outlast the outages: the runs in flight keep going where they were.
    runs = start_runs(procs, pg_head_url, tmp_path, 5, sleep=0.1)
    worker = procs.worker("crash.py", url, lease=30, concurrency=10)
    wait_more(procs, runs, 10, "steps before the first outage")

    for outage in (1, 2):
        # The server goes away: live connections drop and new ones are refused.
        proxy.refuse()
        proxy.cut()
        procs.wait_until(has(worker, UNAVAILABLE, outage), 30, f"outage {outage} reported")
        # Let the worker retry a few times against the refusing proxy.
        tries = proxy.refused + 3
        procs.wait_until(lambda: proxy.refused >= tries, 30, "reconnection attempts")  # noqa: B023
        assert_alive(worker)
        proxy.accept()
        procs.wait_until(has(worker, REACHABLE, outage), 30, f"end of outage {outage} reported")
        wait_more(procs, runs, 10, f"steps after outage {outage}")

    wait_completed(procs, pg_head_url, runs)
    assert_alive(worker)
    assert outage_lines(worker.output) == (2, 2), worker.output
    no_tracebacks(worker)
    # The outages were shorter than the leases, and writes in flight were retried: no step
    # executed twice.
    assert_each_step_once(runs)


# -- a private PostgreSQL cluster, restarted and stopped ---------------------------------------


@pytest.mark.postgres
def test_postgres_restarted_and_stopped(
    procs: Any,
    private_pg: Any,  # noqa: F811 (the fixture imported from faults)
    tmp_path: Path,
) -> None:
    url = private_pg.create_database("outages")
    runs = start_runs(procs, url, tmp_path, 5, sleep=0.1)
    worker = procs.worker("crash.py", url, lease=30, concurrency=10)
    wait_more(procs, runs, 10, "steps before the restart")

    private_pg.restart(mode="fast")
    wait_more(procs, runs, 10, "steps after the restart")
    assert_alive(worker)
    # Whatever the restart cost, it is over (each start reported has its end) before the stop.
    procs.wait_until(lambda: settled(worker), 30, "the restart's outage (if any) over")

    before = worker.output.count(UNAVAILABLE)
    private_pg.stop(mode="fast")
    procs.wait_until(has(worker, UNAVAILABLE, before + 1), 30, "the stop reported")
    # Down for a while: the worker keeps retrying (with backoff) and stays alive.
    procs.wait_until(
        lambda: worker.output.count(UNAVAILABLE) == before + 1 and _stalled(runs), 30, "stall"
    )
    assert_alive(worker)
    private_pg.start()
    procs.wait_until(has(worker, REACHABLE, before + 1), 60, "the start reported")

    wait_completed(procs, url, runs)
    assert_alive(worker)
    unavailable, reachable = outage_lines(worker.output)
    assert unavailable == reachable, worker.output
    no_tracebacks(worker)


def _stalled(runs: dict[str, Path], seconds: float = 1.0) -> bool:
    """No step executed for `seconds` (the database is down, so nothing can be recorded)."""
    newest = max((p.stat().st_mtime for p in runs.values() if p.exists()), default=0.0)
    return time.time() - newest >= seconds


# -- pg_terminate_backend on the shared server --------------------------------------------------


@pytest.mark.postgres
def test_backends_terminated(procs: Any, pg_head_url: str, tmp_path: Path) -> None:
    dbname = pg_head_url.rsplit("/", 1)[1]
    admin = pg_head_url.rsplit("/", 1)[0] + "/postgres"

    def terminate() -> None:
        killed = pg_execute(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            dbname,
        )
        assert killed, "the worker had no connection to terminate"

    runs = start_runs(procs, pg_head_url, tmp_path, 5, sleep=0.1)
    worker = procs.worker("crash.py", pg_head_url, lease=30, concurrency=10)
    wait_more(procs, runs, 10, "steps before the first termination")
    # While runs are in flight.
    for round_ in range(2):
        terminate()
        wait_more(procs, runs, 10, f"steps after termination {round_ + 1}")
        assert_alive(worker)
    wait_completed(procs, pg_head_url, runs)

    # While the worker is idle: every pooled connection is dead when new work arrives.
    terminate()
    more = start_runs(procs, pg_head_url, tmp_path / "more", 2, sleep=0.01)
    wait_completed(procs, pg_head_url, more)
    assert_alive(worker)
    procs.wait_until(lambda: settled(worker), 30, "every outage reported over")
    no_tracebacks(worker)


# -- SQLite locked by another process past the busy timeout -------------------------------------


def _status(path: Path, run_id: str) -> str:
    # Plain sqlite3 reads take no write lock: they answer while another process holds it.
    db = sqlite3.connect(path)
    try:
        row = db.execute("SELECT status FROM engine_runs WHERE id = ?", (run_id,)).fetchone()
        return str(row[0])
    finally:
        db.close()


def test_sqlite_locked_past_the_busy_timeout(procs: Any, tmp_path: Path) -> None:
    path = tmp_path / "engine.db"
    # A short busy timeout (`?timeout=` seconds) keeps the test short; the outage is the same.
    url = f"sqlite+aiosqlite:///{path}?timeout=1"
    plain = f"sqlite+aiosqlite:///{path}"
    runs = start_runs(procs, plain, tmp_path, 3, sleep=0.1)
    worker = procs.worker("crash.py", url, lease=120, concurrency=10)
    wait_more(procs, runs, 10, "steps before the lock")
    # An idle loop takes no write lock (it reads first): the worker meets the lock when it has
    # something to claim, this run falling due while the lock is held.
    payload = {"log": str(tmp_path / "delayed.log"), "n": STEPS, "sleep": 0.1}
    delayed = procs.start(plain, "many-tasks", payload, app="crash.py", delay=5)
    runs[delayed] = tmp_path / "delayed.log"

    with SQLiteLock(path):
        status = _status(path, delayed)
        assert status == "QUEUED", f"the delayed run was {status} before the lock was taken"
        # Held until the worker has given up waiting for it at least once.
        procs.wait_until(has(worker, UNAVAILABLE), 60, "the lock reported")
        assert_alive(worker)
    procs.wait_until(has(worker, REACHABLE), 60, "the end of the lock reported")
    wait_completed(procs, plain, runs)
    assert_alive(worker)
    assert outage_lines(worker.output) == (1, 1), worker.output
    no_tracebacks(worker)
