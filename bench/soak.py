"""Soak: many trials of real faults against three `engine run` workers on PostgreSQL.

    python bench/soak.py --trials 50          # the figure in docs/reliability.md
    python bench/soak.py --trials 3           # a quick check (a couple of minutes)

Each trial creates a fresh database on a private PostgreSQL cluster (initdb'd once, on a free
port), starts three workers (short leases) that reach it through a TCP proxy, triggers a stream
of multi-step runs of `bench/soak_app.py` (steps, a durable wait, and in some runs a step that
returns a poisoned value), and meanwhile injects random faults:

  kill      `kill -9` of a random worker; a replacement is started
  terminate `pg_terminate_backend` of one or all connections to the trial's database
  cut       every connection through the proxy cut, new ones refused for 1-4 s
  restart   the cluster restarted (`pg_ctl restart -m fast`), or stopped for 1-5 s and started

Then it counts, per trial:

  lost      a triggered run that is missing, or not final at the end of the trial
  stuck     a run not final `--stuck-after` seconds after the last fault ended
  repeated  a step function that started although its task was already COMPLETED (the step asks
            the database itself; executions that could not ask are compared with
            engine_tasks.completed_at)
  exits     a worker that exited without being killed by the soak (it is replaced, as a
            supervisor would, and counted)
  poison    a poisoned run that neither ended FAILED with an error and its step ERRORED once
            (no execution after the recorded refusal), nor COMPLETED with the value stored
            exactly (the job checks what it gets back)
  wrong     a COMPLETED run whose output is not the sum of its steps

Every trial has a hard deadline; workers, the proxy and the cluster are killed at the end
whatever happened (workers also die with the soak: PR_SET_PDEATHSIG). Exit status 0 when every
count is 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for path in (ROOT, ROOT / "tests", HERE):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import asyncpg  # noqa: E402
import soak_app  # noqa: E402  (registers the job, so trigger knows it)
from faults import PrivatePostgres, TcpProxy, private_pg_unavailable, with_port  # noqa: E402

from engine import Engine  # noqa: E402

ENGINE = str(Path(sys.executable).parent / "engine")
APP = HERE / "soak_app.py"
FINAL = frozenset({"COMPLETED", "FAILED", "CANCELED"})
FAULTS = ("kill", "terminate", "cut", "restart")
COLUMNS = ("lost", "stuck", "repeated", "exits", "poison", "wrong")


# -- one worker process ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the soak dies, even by kill -9 (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class Worker:
    def __init__(self, n: int, url: str, cwd: Path, env: dict[str, str], args: Any) -> None:
        self.log_path = cwd / f"worker{n}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [ENGINE, "run", str(APP), "--database-url", url,
             "--lease-seconds", str(args.lease_seconds), "--concurrency", str(args.concurrency)],
            cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.killed = False

    def ready(self) -> bool:
        return any(
            line.startswith("engine worker ") and " on " in line
            for line in self.output().splitlines()
        )

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        self.killed = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()


# -- one trial ---------------------------------------------------------------------------------


@dataclass
class TrialResult:
    n: int
    runs: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    poisoned: Counter[str] = field(default_factory=Counter)  # failed-clearly / stored-exactly
    errors: Counter[str] = field(default_factory=Counter)  # poisoned runs' error messages
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False


class Trial:
    def __init__(
        self, n: int, cluster: PrivatePostgres, args: Any, seed: int, workdir: Path
    ) -> None:
        self.n = n
        self.cluster = cluster
        self.args = args
        # Two streams, so a seed gives the same runs and the same faults on every branch
        # (only their timing differs): one for the runs, one for the faults.
        self.runs_rng = random.Random(f"{seed}-{n}-runs")
        self.faults_rng = random.Random(f"{seed}-{n}-faults")
        self.dir = workdir / f"trial{n:03d}"
        self.dir.mkdir(parents=True)
        self.dbname = f"soak_{n}_{uuid.uuid4().hex[:8]}"
        self.direct_url = cluster.url(self.dbname)
        self.direct_dsn = cluster.dsn(self.dbname)
        self.proxy = TcpProxy("127.0.0.1", cluster.port)
        self.workers: list[Worker] = []
        self.exec_log = self.dir / "executions.jsonl"
        self.result = TrialResult(n)
        self.triggered: dict[str, dict[str, Any]] = {}  # run id -> payload
        self.last_fault_end = time.monotonic()
        self.env = {k: v for k, v in os.environ.items() if k != "ENGINE_DATABASE_URL"}
        self.env.update(
            PYTHONUNBUFFERED="1",
            SOAK_EXEC_LOG=str(self.exec_log),
            SOAK_CHECK_DSN=self.direct_dsn,
            PYTHONPATH=os.pathsep.join([str(ROOT), self.env.get("PYTHONPATH", "")]),
        )

    # -- setup and teardown -----------------------------------------------------------------------

    async def setup(self) -> None:
        await asyncio.to_thread(self.cluster.create_database, self.dbname)
        async with Engine(self.direct_url) as engine:
            await engine.upgrade()
        self.proxy.start()
        for _ in range(self.args.workers):
            self.start_worker()
        deadline = time.monotonic() + 60
        while not all(w.ready() for w in self.workers):
            for w in self.workers:
                if w.proc.poll() is not None:
                    raise RuntimeError(f"worker exited at start:\n{w.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready after 60s")
            await asyncio.sleep(0.1)

    def start_worker(self) -> Worker:
        url = with_port(self.direct_url, self.proxy.port)
        worker = Worker(len(self.workers), url, self.dir, self.env, self.args)
        self.workers.append(worker)
        return worker

    def teardown(self) -> None:
        for w in self.workers:
            w.kill()
        self.proxy.stop()
        if not self.cluster.running:
            with contextlib.suppress(Exception):
                self.cluster.start()
        with contextlib.suppress(Exception):
            self.cluster.execute(f'DROP DATABASE IF EXISTS "{self.dbname}" WITH (FORCE)')

    # -- the stream of runs ---------------------------------------------------------------------

    def payload(self, i: int) -> dict[str, Any]:
        rng = self.runs_rng
        steps = rng.randint(3, 7)
        payload: dict[str, Any] = {
            "delays": [round(rng.uniform(0.0, 0.3), 3) for _ in range(steps)],
            "wait_at": rng.randrange(steps),
            "wait": round(rng.uniform(0.5, 3.0), 2),
        }
        if rng.random() < self.args.poison_rate:
            payload["poison"] = rng.choice(sorted(soak_app.POISONS))
            payload["poison_at"] = rng.randrange(steps)
        return payload

    async def trigger_stream(self, seconds: float) -> None:
        gap = seconds / max(1, self.args.runs)
        engine: Engine | None = None
        try:
            for i in range(self.args.runs):
                payload = self.payload(i)
                key = f"{self.dbname}-{i}"
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if engine is None:
                            engine = Engine(self.direct_url, pool_size=1)
                        run_id = await asyncio.wait_for(
                            engine.trigger("soak", payload, idempotency_key=key), 15
                        )
                        break
                    except Exception as exc:  # the database is down: the same key again
                        if engine is not None:
                            with contextlib.suppress(Exception):
                                await asyncio.wait_for(engine.close(), 5)
                            engine = None
                        if time.monotonic() > deadline:
                            self.result.notes.append(f"trigger {i} failed for 60s: {exc!r}")
                            raise
                        await asyncio.sleep(0.5)
                self.triggered[run_id] = payload
                await asyncio.sleep(self.runs_rng.uniform(0, 2 * gap))
        finally:
            if engine is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(engine.close(), 5)

    # -- faults ---------------------------------------------------------------------------------

    async def inject_faults(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        kinds = self.args.faults
        while True:
            await asyncio.sleep(self.faults_rng.expovariate(1 / self.args.fault_every))
            if time.monotonic() > end:
                return
            kind = self.faults_rng.choice(kinds)
            try:
                await getattr(self, f"fault_{kind}")()
            except Exception as exc:
                self.result.notes.append(f"fault {kind} failed: {exc!r}")
            self.result.faults[kind] += 1
            self.last_fault_end = time.monotonic()

    async def fault_kill(self) -> None:
        alive = [w for w in self.workers if w.proc.poll() is None and not w.killed]
        if alive:
            await asyncio.to_thread(self.faults_rng.choice(alive).kill)
        self.start_worker()

    async def fault_terminate(self) -> None:
        everyone = self.faults_rng.random() < 0.5
        sql = (
            "SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()"
            + ("" if everyone else " ORDER BY random() LIMIT 1")
            + ") AS chosen"
        )
        await asyncio.to_thread(self.cluster.execute, sql, self.dbname)

    async def fault_cut(self) -> None:
        """Cut every connection and refuse new ones for a while: the outage ends with accept()."""
        seconds = self.faults_rng.uniform(1, 4)
        self.proxy.refuse()
        self.proxy.cut()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.proxy.accept()

    async def fault_restart(self) -> None:
        if self.faults_rng.random() < 0.5:
            await asyncio.to_thread(self.cluster.restart, "fast")
        else:
            await asyncio.to_thread(self.cluster.stop, "fast")
            await asyncio.sleep(self.faults_rng.uniform(1, 5))
            await asyncio.to_thread(self.cluster.start)

    # -- workers that exit on their own ---------------------------------------------------------

    async def watch_workers(self) -> None:
        while True:
            for w in list(self.workers):
                if not w.killed and w.proc.poll() is not None:
                    w.killed = True  # counted once
                    self.result.counts["exits"] += 1
                    tail = " | ".join(w.output().strip().splitlines()[-2:])
                    self.result.notes.append(
                        f"worker {w.proc.pid} exited {w.proc.returncode}: {tail[:300]}"
                    )
                    self.start_worker()
            await asyncio.sleep(0.2)

    # -- reading the outcome ----------------------------------------------------------------------

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """One query on a fresh direct connection, retried while the database is down."""
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = await asyncpg.connect(self.direct_dsn, timeout=5)
                try:
                    return list(await asyncio.wait_for(conn.fetch(sql, *args), 20))
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)

    async def statuses(self) -> dict[str, str]:
        rows = await self.fetch(
            "SELECT id, status FROM engine_runs WHERE id = ANY($1)", list(self.triggered)
        )
        return {r["id"]: r["status"] for r in rows}

    async def settle(self) -> None:
        """Waits for every run to be final: those not final `stuck_after` seconds after the last
        fault are stuck; those not final `grace` seconds later still are lost."""
        stuck_at = self.last_fault_end + self.args.stuck_after
        lost_at = stuck_at + self.args.grace
        stuck_counted = False
        while True:
            statuses = await self.statuses()
            pending = [r for r in self.triggered if statuses.get(r) not in FINAL]
            now = time.monotonic()
            if not pending:
                return
            if now > stuck_at and not stuck_counted:
                stuck_counted = True
                self.result.counts["stuck"] = len(pending)
                for run_id in pending[:3]:
                    self.result.notes.append(
                        f"stuck: {run_id} {statuses.get(run_id, 'MISSING')} "
                        f"{json.dumps(self.triggered[run_id])[:120]}"
                    )
            if now > lost_at:
                return
            await asyncio.sleep(0.5)

    def executions(self) -> list[dict[str, Any]]:
        try:
            text = self.exec_log.read_text()
        except OSError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    async def evaluate(self) -> None:
        res = self.result
        res.runs = len(self.triggered)
        runs = {
            r["id"]: r
            for r in await self.fetch(
                "SELECT id, status, output::text AS output, error::text AS error FROM engine_runs "
                "WHERE id = ANY($1)",
                list(self.triggered),
            )
        }
        tasks = {
            (r["run_id"], r["key"]): r
            for r in await self.fetch(
                "SELECT run_id, key, status, completed_at FROM engine_tasks WHERE run_id = ANY($1)",
                list(self.triggered),
            )
        }
        lost = [r for r in self.triggered if runs.get(r, {}).get("status") not in FINAL]
        res.counts["lost"] = len(lost)
        for run_id in lost[:3]:
            row = runs.get(run_id)
            res.notes.append(f"lost: {run_id} {row['status'] if row else 'MISSING'}")

        per_step: Counter[tuple[str, str]] = Counter()
        after_outcome: Counter[tuple[str, str]] = Counter()  # started after the recorded outcome
        for ex in self.executions():
            ident = (ex["run"], ex["key"])
            per_step[ident] += 1
            task = tasks.get(ident)
            recorded_at = task["completed_at"] if task else None
            after = recorded_at is not None and ex["t"] > recorded_at.timestamp() + 1e-3
            if after or ex["seen"] in ("COMPLETED", "ERRORED"):
                after_outcome[ident] += 1
            if task is None or task["status"] != "COMPLETED":
                continue
            if ex["seen"] == "COMPLETED" or after:
                res.counts["repeated"] += 1
                if res.counts["repeated"] <= 3:
                    res.notes.append(
                        f"repeated: {ident} seen={ex['seen']} t={ex['t']:.3f} "
                        f"completed_at={recorded_at}"
                    )

        for run_id, payload in self.triggered.items():
            row = runs.get(run_id)
            poison = payload.get("poison")
            if row is None or row["status"] not in FINAL:
                if poison is not None:  # lost, and also a poisoned run that did not end
                    ran = per_step[(run_id, "step-{}".format(payload["poison_at"]))]
                    res.counts["poison"] += 1
                    res.notes.append(f"poison {poison}: {run_id} never ended (step ran {ran}x)")
                continue
            output = json.loads(row["output"]) if row["output"] else None
            if poison is None:
                expected = {"total": sum(range(1, len(payload["delays"]) + 1))}
                if row["status"] != "COMPLETED" or output != expected:
                    res.counts["wrong"] += 1
                    res.notes.append(
                        f"wrong: {run_id} {row['status']} {output} {(row['error'] or '')[:200]}"
                    )
                continue
            key = f"step-{payload['poison_at']}"
            task = tasks.get((run_id, key))
            # Recorded once: the step's outcome is in the log (ERRORED for a refusal) and no
            # execution started after it. A second execution before it is fine (a worker killed
            # in flight records nothing); one run FAILED by a bound on recoveries is not clean.
            once = task is not None and after_outcome[(run_id, key)] == 0
            ran = per_step[(run_id, key)]
            error = json.loads(row["error"]) if row["error"] else None
            message = str((error or {}).get("message", ""))
            if row["status"] == "FAILED" and message and once and task["status"] == "ERRORED":
                res.poisoned["failed"] += 1
                text = re.sub(r"step-\d+", "step-N", f"{(error or {}).get('type')}: {message}")
                res.errors[f"{poison}: {text[:110]}"] += 1
            elif row["status"] == "COMPLETED" and once and task["status"] == "COMPLETED":
                res.poisoned["stored"] += 1  # and the job checked it came back exactly
            else:
                res.counts["poison"] += 1
                res.notes.append(
                    f"poison {poison}: {run_id} {row['status']} step ran {ran}x {message[:150]}"
                )

    # -- the whole trial --------------------------------------------------------------------------

    async def run(self) -> None:
        await self.setup()
        watcher = asyncio.create_task(self.watch_workers())
        try:
            self.last_fault_end = time.monotonic()
            await asyncio.gather(
                self.trigger_stream(self.args.fault_seconds * 0.8),
                self.inject_faults(self.args.fault_seconds),
            )
            await self.settle()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def run_trial(
    n: int, cluster: PrivatePostgres, args: Any, seed: int, workdir: Path
) -> TrialResult:
    trial = Trial(n, cluster, args, seed, workdir)
    started = time.monotonic()
    hard = args.fault_seconds + args.stuck_after + args.grace + 120
    try:
        try:
            await asyncio.wait_for(trial.run(), hard)
        except TimeoutError:
            trial.result.timed_out = True
            trial.result.notes.append(f"trial hit its hard deadline ({hard:.0f}s)")
        except Exception as exc:  # the soak's own trouble: reported, the trial counts as failed
            trial.result.timed_out = True
            trial.result.notes.append(f"trial aborted: {exc!r}"[:400])
        for w in trial.workers:  # before evaluating, so nothing changes under the count
            w.kill()
        if not cluster.running:
            await asyncio.to_thread(cluster.start)
        try:
            await asyncio.wait_for(trial.evaluate(), 120)
        except Exception as exc:
            trial.result.timed_out = True
            trial.result.notes.append(f"evaluation failed: {exc!r}"[:400])
    finally:
        await asyncio.to_thread(trial.teardown)
        trial.result.seconds = time.monotonic() - started
    return trial.result


# -- the report --------------------------------------------------------------------------------


def fault_text(faults: Counter[str]) -> str:
    return " ".join(f"{k[0]}{faults[k]}" for k in FAULTS if faults[k])


def print_row(res: TrialResult) -> None:
    cells = [f"{res.n:>5}", f"{res.runs:>4}", f"{fault_text(res.faults):<14}"]
    cells += [f"{res.counts[c]:>{max(5, len(c))}}" for c in COLUMNS]
    cells.append(f"{res.seconds:>5.0f}s" + (" TIMEOUT" if res.timed_out else ""))
    print(" ".join(cells), flush=True)
    shown: Counter[str] = Counter()
    for note in res.notes:  # at most three of each kind
        kind = note.split(" ", 1)[0]
        shown[kind] += 1
        if shown[kind] <= 3:
            print(f"        {note}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Soak the engine under random real faults.")
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--runs", type=int, default=24, help="runs triggered per trial")
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--lease-seconds", type=float, default=3.0)
    p.add_argument(
        "--fault-seconds",
        type=float,
        default=15.0,
        help="how long each trial injects faults (runs are triggered meanwhile)",
    )
    p.add_argument("--fault-every", type=float, default=2.5, help="mean seconds between faults")
    p.add_argument(
        "--faults", default=",".join(FAULTS), help=f"comma-separated subset of {','.join(FAULTS)}"
    )
    p.add_argument(
        "--poison-rate", type=float, default=0.2, help="share of runs with a poisoned step"
    )
    p.add_argument(
        "--stuck-after",
        type=float,
        default=30.0,
        help="a run not final this long after the last fault is stuck",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="further seconds before a run that is still not final counts as lost",
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--keep", action="store_true", help="keep every trial's logs")
    args = p.parse_args(argv)
    args.faults = [f for f in args.faults.split(",") if f]
    unknown = set(args.faults) - set(FAULTS)
    if unknown or not args.faults:
        p.error(f"--faults: use some of {','.join(FAULTS)}")
    reason = private_pg_unavailable()
    if reason:
        print(f"error: the soak needs a private PostgreSQL cluster: {reason}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    workdir = Path(tempfile.mkdtemp(prefix="engine-soak-"))
    print(
        f"soak: {args.trials} trials x {args.runs} runs, {args.workers} workers, lease "
        f"{args.lease_seconds:g}s, faults {','.join(args.faults)} every ~{args.fault_every:g}s "
        f"for {args.fault_seconds:g}s, seed {seed}, logs in {workdir}",
        flush=True,
    )
    header = ["trial", "runs", f"{'faults':<14}"] + [f"{c:>5}" for c in COLUMNS] + ["  time"]
    print(" ".join(header), flush=True)
    results: list[TrialResult] = []
    cluster = PrivatePostgres()
    started = time.monotonic()
    try:
        cluster.start()
        for n in range(1, args.trials + 1):
            res = asyncio.run(run_trial(n, cluster, args, seed, workdir))
            results.append(res)
            print_row(res)
    except KeyboardInterrupt:
        print("soak: interrupted", file=sys.stderr)
    finally:
        cluster.close()
    totals: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    poisoned: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for res in results:
        totals.update(res.counts)
        faults.update(res.faults)
        poisoned.update(res.poisoned)
        errors.update(res.errors)
    runs = sum(r.runs for r in results)
    print(
        " ".join(
            [f"{'total':>5}", f"{runs:>4}", f"{fault_text(faults):<14}"]
            + [f"{totals[c]:>{max(5, len(c))}}" for c in COLUMNS]
            + [f"{time.monotonic() - started:>5.0f}s"]
        )
    )
    print(
        f"poisoned runs: {poisoned['failed']} failed with one error, {poisoned['stored']} "
        f"stored exactly, {totals['poison']} neither"
    )
    for text, count in errors.most_common(8):
        print(f"  {count:>4}x {text}")
    bad = any(totals[c] for c in COLUMNS) or any(r.timed_out for r in results)
    print(
        f"soak: {len(results)} trials, {runs} runs, {sum(faults.values())} faults: "
        f"{totals['lost']} lost, {totals['stuck']} stuck, {totals['repeated']} completed steps "
        f"repeated, {totals['exits']} worker exits, {totals['poison']} poisoned runs not "
        f"failed cleanly, {totals['wrong']} wrong outputs (seed {seed})"
    )
    if bad or args.keep:
        print(f"logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if bad or len(results) < args.trials else 0


if __name__ == "__main__":
    sys.exit(main())
