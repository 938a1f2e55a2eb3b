"""`engine ui` as a process: what it refuses to start with, the token over real HTTP, and the
live runs stream (server-sent events) while a real worker executes runs."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboard import TOKEN, Dashboard, free_port

pytestmark = pytest.mark.slow


def test_bad_settings_refuse_to_start_with_one_error_line(
    procs: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("ENGINE_UI_TOKEN", raising=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    procs.ok("db", "upgrade", "--database-url", url)
    refused = procs.cli("ui", "--database-url", url, "--host", "0.0.0.0", timeout=30)
    assert refused.returncode == 1, str(refused)
    assert (
        refused.stderr.startswith("error: --host 0.0.0.0") and "ENGINE_UI_TOKEN" in refused.stderr
    )
    assert "Traceback" not in refused.stderr and len(refused.stderr.splitlines()) == 1

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = procs.cli("ui", "--database-url", url, "--port", port)
    assert busy.returncode == 1 and busy.stderr.startswith(
        f"error: cannot listen on 127.0.0.1:{port}"
    )
    assert "Traceback" not in busy.stderr
    bad_port = procs.cli("ui", "--database-url", url, "--port", "70000")
    assert bad_port.returncode == 1 and bad_port.stderr.startswith("error: --port 70000")

    monkeypatch.setenv("ENGINE_PRICES", str(tmp_path / "no-prices.json"))
    prices = procs.cli("ui", "--database-url", url)
    assert prices.returncode == 1 and "cannot read the price table" in prices.stderr
    assert prices.stderr.startswith("error: ") and "Traceback" not in prices.stderr
    monkeypatch.delenv("ENGINE_PRICES")

    missing = procs.cli("ui", "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 1 and missing.stderr.startswith("error: no engine database")
    assert not (tmp_path / "none.db").exists()


def test_live_stream_sends_status_changes_and_the_token_guards_it(
    procs: Any, dashboards: list[Dashboard], tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    procs.worker("basic.py", url)
    ui = Dashboard(url, tmp_path, token=TOKEN)
    dashboards.append(ui.wait_ready())

    assert httpx.get(f"{ui.base}/", timeout=10).status_code == 401
    assert httpx.get(f"{ui.base}/events/runs", timeout=10).status_code == 401

    statuses: list[str] = []
    run_id = ""
    with httpx.stream(
        "GET", f"{ui.base}/events/runs", headers=ui.headers(), timeout=httpx.Timeout(10, read=30)
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        run_id = procs.trigger(url, "typed", {"n": 4})
        deadline = time.monotonic() + 60
        for line in stream.iter_lines():
            assert time.monotonic() < deadline, f"no COMPLETED event for {run_id}: {statuses}"
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["id"] == run_id:
                statuses.append(event["status"])
                assert f'data-id="{run_id}"' in event["html"]
                if event["status"] == "COMPLETED":
                    break
    assert statuses[-1] == "COMPLETED"
    page = httpx.get(f"{ui.base}/runs/{run_id}", headers=ui.headers(), timeout=10)
    assert page.status_code == 200 and "&quot;doubled&quot;: 8" in page.text
    # The token never reaches the log (there is no access log at all).
    assert TOKEN not in ui.output


def test_a_worker_serves_the_dashboard_and_stops_with_it(
    procs: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`engine run APP --ui`: one process executes runs and serves the dashboard; SIGTERM
    drains the worker, closes the dashboard (an open event stream included) and exits 0."""
    monkeypatch.delenv("ENGINE_UI_TOKEN", raising=False)
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    refused = procs.cli("run", "basic.py", "--database-url", url, "--ui", "--ui-host", "0.0.0.0")
    assert refused.returncode == 1 and refused.stderr.startswith("error: --host 0.0.0.0")
    assert "Traceback" not in refused.stderr and "engine worker" not in refused.stderr

    port = free_port()
    worker = procs.worker("basic.py", url, ui=True, ui_port=port)
    base = f"http://127.0.0.1:{port}"
    procs.wait_until(lambda: _answers(f"{base}/static/app.css"), 30, "the worker's dashboard")
    run_id = procs.trigger(url, "typed", {"n": 2})
    procs.wait_status(url, run_id, "COMPLETED")
    page = httpx.get(f"{base}/runs/{run_id}", timeout=10)
    assert page.status_code == 200 and "&quot;doubled&quot;: 4" in page.text
    # The same security rules as `engine ui`: a request naming another host is refused.
    assert httpx.get(f"{base}/", headers={"host": "evil.example"}, timeout=10).status_code == 400

    with httpx.stream("GET", f"{base}/events/runs", timeout=httpx.Timeout(10, read=30)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.output
    assert not _answers(f"{base}/static/app.css")
    assert "engine worker stopped" in worker.output and "Traceback" not in worker.output
    assert f"engine ui on {base}/" in worker.output


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
