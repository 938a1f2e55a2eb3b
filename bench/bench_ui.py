"""The dashboard's server time with `--runs` runs in the database (default 100,000).

Runs are inserted in bulk (10 jobs x 2 versions, every status, one in ten with an idempotency
key, created over a month), plus one run with `--tasks` tasks (default 1,000). Each page is
then requested through the ASGI app in-process (httpx's ASGI transport, no network), so the
figure is the server's time: the queries and the HTML.

    python bench/bench_ui.py [--db sqlite|postgres|both] [--runs 100000] [--tasks 1000]
                             [--browser]

Targets (issue 9): every runs page at most 50 ms; with --browser, the run of 1,000 tasks loaded
in headless Chromium (navigation start to the load event's end) in at most 1 s.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
import uuid
from typing import Any

import common

TARGET_MS = 50.0
STATUSES = ["COMPLETED"] * 80 + ["FAILED"] * 8 + ["CANCELED"] * 4 + ["WAITING"] * 4 + ["QUEUED"] * 4


async def fill(url: str, runs: int, tasks: int) -> dict[str, str]:
    """Inserts the runs and the big run; returns names of things the pages will look up."""
    from engine.client import Engine
    from engine.schema import runs as runs_table
    from engine.schema import tasks as tasks_table

    engine = Engine(url)
    await engine.upgrade()
    rng = random.Random(9)
    start = time.time() - 30 * 86400
    marks: dict[str, str] = {}
    try:
        batch: list[dict[str, Any]] = []
        for i in range(runs):
            created = start + i * (30 * 86400 / runs)
            status = rng.choice(STATUSES)
            run = {
                "id": uuid.uuid4().hex,
                "job_id": f"job-{i % 10}",
                "job_version": str(1 + i % 2),
                "status": status,
                "payload": {"n": i, "text": "lorem ipsum " * 4},
                "output": {"ok": i} if status == "COMPLETED" else None,
                "idempotency_key": f"key-{i}" if i % 10 == 0 else None,
                "attempt": 1,
                "lease_epoch": 1,
                "created_at": created,
                "started_at": created + 0.01,
                "completed_at": created + 2.5 if status in ("COMPLETED", "FAILED") else None,
            }
            batch.append(run)
            if i == runs // 2:
                marks["middle"] = run["id"]
                marks["key"] = str(run["idempotency_key"] or f"key-{i - i % 10}")
            if len(batch) == 5000:
                async with engine.store.begin() as conn:
                    await conn.execute(runs_table.insert(), batch)
                batch = []
        big = uuid.uuid4().hex
        batch.append(
            {
                "id": big,
                "job_id": "job-big",
                "job_version": "1",
                "status": "COMPLETED",
                "payload": {},
                "output": {"tasks": tasks},
                "idempotency_key": None,
                "attempt": 1,
                "lease_epoch": 1,
                "created_at": time.time(),
                "started_at": time.time(),
                "completed_at": time.time() + 60,
            }
        )
        async with engine.store.begin() as conn:
            await conn.execute(runs_table.insert(), batch)
            now = time.time()
            await conn.execute(
                tasks_table.insert(),
                [
                    {
                        "run_id": big,
                        "parent_path": "[]" if t % 10 == 0 else json.dumps([f"t{t - t % 10}"]),
                        "key": f"t{t}",
                        "kind": "wait" if t % 50 == 7 else "task",
                        "name": f"step {t}",
                        "status": "COMPLETED",
                        "attempts": 1,
                        "params": {"i": t},
                        "output": {"value": t, "text": "x" * 200},
                        "seq": t,
                        "started_at": now + t * 0.05,
                        "completed_at": now + t * 0.05 + 0.04,
                    }
                    for t in range(tasks)
                ],
            )
        marks["big"] = big
        marks["prefix"] = marks["middle"][:10]
    finally:
        await engine.close()
    return marks


async def bench(url: str, args: Any) -> list[tuple[Any, ...]]:
    import httpx

    from engine.ui import create_app

    t0 = time.perf_counter()
    marks = await fill(url, args.runs, args.tasks)
    print(f"inserted {args.runs:,} runs in {time.perf_counter() - t0:.0f} s", flush=True)
    cases = [
        ("runs, first page", "/", TARGET_MS),
        ("runs, page 1,000 deep (keyset)", f"/?after={marks['middle']}", TARGET_MS),
        ("runs, job filter", "/?job=job-3", TARGET_MS),
        ("runs, status FAILED", "/?status=FAILED", TARGET_MS),
        ("runs, job + version + status", "/?job=job-4&version=1&status=CANCELED", TARGET_MS),
        ("runs, search idempotency key", f"/?q={marks['key']}", TARGET_MS),
        ("runs, search id prefix", f"/?q={marks['prefix']}", TARGET_MS),
        (f"run page, {args.tasks:,} tasks", f"/runs/{marks['big']}", ""),
    ]
    app = create_app(url)
    rows = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            for label, path, target in cases:
                samples = []
                for _ in range(args.repeat):
                    started = time.perf_counter()
                    response = await http.get(path)
                    samples.append(time.perf_counter() - started)
                    assert response.status_code == 200, (path, response.status_code)
                med = common.ms(statistics.median(samples))
                verdict = "" if target == "" else ("ok" if med <= target else "MISS")
                size = len(response.content) // 1024
                rows.append((label, med, common.ms(common.pct(samples, 95)), size, target, verdict))
    if args.browser:
        rows += browser_rows(url, f"/runs/{marks['big']}", args)
    return rows


def browser_rows(url: str, path: str, args: Any) -> list[tuple[Any, ...]]:
    """The big run's page loaded in headless Chromium from a real `engine ui`: navigation
    start to the load event's end (download, parse, layout, app.js), median of the loads."""
    import shutil
    import sys
    from pathlib import Path

    sys.path.insert(0, str(common.ROOT / "tests"))
    from dashboard import Dashboard  # the tests' helper: a free port, its group killed on close

    label = f"run page, {args.tasks:,} tasks, in Chromium"
    browser, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver_path:
        return [(label + " (no chromium: skipped)", "", "", "", 1000.0, "")]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    workdir = Path(common.tempfile.mkdtemp(prefix="engine-bench-ui-"))
    ui = Dashboard(url, workdir)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = None
    samples: list[float] = []
    cpu: list[float] = []
    try:
        ui.wait_ready()
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
        driver.set_page_load_timeout(60)
        driver.execute_cdp_cmd("Performance.enable", {})

        def renderer_cpu() -> float:
            metrics = driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
            return float(next(m["value"] for m in metrics if m["name"] == "ProcessTime"))

        for _ in range(max(3, args.repeat // 3)):
            driver.get("about:blank")
            before = renderer_cpu()
            driver.get(ui.base + path)
            elapsed = driver.execute_script(
                "const n = performance.getEntriesByType('navigation')[0];"
                "return n.loadEventEnd - n.startTime;"
            )
            samples.append(float(elapsed) / 1000.0)
            cpu.append(renderer_cpu() - before)
    finally:
        if driver is not None:
            driver.quit()
        ui.close()
        common.shutil.rmtree(workdir, ignore_errors=True)
    med = common.ms(statistics.median(samples))
    verdict = "ok" if med <= 1000.0 else "MISS"
    # The renderer's CPU time for the load (DevTools' ProcessTime): what the page costs the
    # browser, which the machine's load stretches far less than the wall-clock time above.
    cpu_row = (label + ", renderer CPU", common.ms(statistics.median(cpu)), "", "", "", "")
    return [(label, med, common.ms(common.pct(samples, 95)), "", 1000.0, verdict), cpu_row]


async def main(args: Any) -> None:
    for kind in common.databases(args.db):
        common.header(f"bench_ui ({args.runs:,} runs, a run of {args.tasks:,} tasks)", kind)
        async with common.bench_db(kind) as db:
            rows = await bench(db.url, args)
            common.table(("dashboard request", "median ms", "p95 ms", "KB", "target ms", ""), rows)


if __name__ == "__main__":
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=100_000)
    p.add_argument("--tasks", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=15)
    p.add_argument(
        "--browser", action="store_true", help="also time the big run's page in headless Chromium"
    )
    asyncio.run(main(p.parse_args()))
