"""The dashboard in a real browser (headless Chromium through Selenium), beside a real worker
and a real `engine ui` process, driven as a person would: watch the runs list change without
reloading, expand a task, cancel and retry from the page, trigger with a bad payload.

Screenshots of the runs and run pages are taken every run; they replace the ones in docs/images/
(for docs/dashboard.md) only with ENGINE_UPDATE_SCREENSHOTS=1, so that running the suite leaves
the work tree clean.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from dashboard import TOKEN, Dashboard
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

pytestmark = pytest.mark.slow

DOC_IMAGES = Path(__file__).resolve().parents[3] / "docs" / "images"
WAIT = 60.0


def row_status(driver: Any, run_id: str) -> str | None:
    # Read in one script: a row found by one call may be replaced by a live update before
    # the next call reads it.
    status = driver.execute_script(
        'const row = document.querySelector(`tr[data-id="${arguments[0]}"]`);'
        "return row ? row.dataset.status : null;",
        run_id,
    )
    return str(status) if status is not None else None


def test_runs_list_run_page_cancel_retry_and_trigger_in_a_browser(
    procs: Any, dashboards: list[Dashboard], browser: Any, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'engine.db'}"
    images = DOC_IMAGES if os.environ.get("ENGINE_UPDATE_SCREENSHOTS") == "1" else tmp_path
    worker = procs.worker("basic.py", url)
    done = procs.trigger(url, "steps")
    procs.trigger(url, "typed", {"n": 2, "label": "first"})
    sleeping = procs.trigger(url, "sleeper", {"seconds": 3600})
    procs.wait_status(url, done, "COMPLETED")
    procs.wait_status(url, sleeping, "WAITING")
    ui = Dashboard(url, tmp_path, token=TOKEN)
    dashboards.append(ui.wait_ready())
    # Live updates replace elements: a stale one is looked up again rather than failing.
    wait = WebDriverWait(browser, WAIT, ignored_exceptions=(StaleElementReferenceException,))

    # The one-time login: the token leaves the address bar at once.
    browser.get(f"{ui.base}/?token={TOKEN}")
    wait.until(ec.presence_of_element_located((By.ID, "runs")))
    assert "token" not in browser.current_url
    assert row_status(browser, sleeping) == "WAITING"
    browser.execute_script("window.notReloaded = true;")

    # Runs appear and change status while the page stays loaded.
    fresh = procs.trigger(url, "typed", {"n": 21, "label": "live"})
    wait.until(lambda d: row_status(d, fresh) == "COMPLETED")
    procs.ok("runs", "cancel", sleeping, "--database-url", url)
    wait.until(lambda d: row_status(d, sleeping) == "CANCELED")
    assert browser.execute_script("return window.notReloaded === true;")
    images.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(images / "dashboard-runs.png"))

    # Jobs and live workers, with what each worker serves.
    browser.get(f"{ui.base}/jobs")
    workers = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "table.workers")))
    assert worker.id and worker.id in workers.text and "typed@1" in workers.text
    assert browser.find_elements(By.CSS_SELECTOR, 'section[data-job="typed"]')
    browser.get(f"{ui.base}/")
    wait.until(ec.presence_of_element_located((By.ID, "runs")))

    # A run: expand a task and see its params and its child task.
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'tr[data-id="{done}"] a').click() or 1)
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, 'details[data-key="outer"]')))
    outer = browser.find_element(By.CSS_SELECTOR, 'details[data-key="outer"]')
    inner = outer.find_element(By.CSS_SELECTOR, 'details[data-key="inner"]')
    assert not inner.is_displayed()
    outer.find_element(By.TAG_NAME, "summary").click()
    wait.until(lambda d: inner.is_displayed())
    assert outer.get_attribute("open") is not None
    # Its body (facts, values) is fetched when it is first opened.
    params = wait.until(
        lambda d: outer.find_element(By.CSS_SELECTOR, ":scope > .task-body details.json")
    )
    assert "kind task" in outer.find_element(By.CSS_SELECTOR, ":scope > .task-body").text
    params.find_element(By.TAG_NAME, "summary").click()
    wait.until(lambda d: '"p"' in params.text or "p: 1" in params.text)
    assert browser.find_elements(By.CSS_SELECTOR, ".timeline .bar")
    browser.set_window_size(1280, 1500)
    browser.execute_script("window.scrollTo(0, 0);")
    browser.save_screenshot(str(images / "dashboard-run.png"))
    browser.set_window_size(1280, 900)

    # The page of a run under way follows it without reloading, keeping open what was opened.
    other = procs.trigger(url, "sleeper", {"seconds": 3600})
    procs.wait_status(url, other, "WAITING")
    browser.get(f"{ui.base}/runs/{other}")
    before = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, 'details[data-key="before"] summary'))
    )
    before.click()
    browser.execute_script("window.notReloaded = true;")
    procs.ok("runs", "cancel", other, "--database-url", url)
    wait.until(lambda d: "CANCELED" in d.find_element(By.CSS_SELECTOR, "dl.facts").text)
    assert browser.execute_script("return window.notReloaded === true;")
    nap = browser.find_element(By.CSS_SELECTOR, 'details[data-key="nap"]')
    assert "CANCELED" in nap.text
    kept = browser.find_element(By.CSS_SELECTOR, 'details[data-key="before"]')
    assert kept.get_attribute("open") is not None

    # Cancel from the page, confirming; the database says CANCELED.
    waiting = procs.trigger(url, "sleeper", {"seconds": 3600})
    procs.wait_status(url, waiting, "WAITING")
    browser.get(f"{ui.base}/runs/{waiting}")
    form = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "form.action")))
    assert f"engine runs cancel {waiting}" in form.text
    form.find_element(By.TAG_NAME, "button").click()
    alert = wait.until(ec.alert_is_present())
    assert waiting in alert.text
    alert.accept()
    procs.wait_status(url, waiting, "CANCELED")
    wait.until(lambda d: "CANCELED" in d.find_element(By.CSS_SELECTOR, "dl.facts").text)

    # Retry a failed run from the page once its cause is fixed; the database says COMPLETED.
    marker = tmp_path / "flaky.marker"
    flaky = procs.trigger(url, "flaky", {"log": str(tmp_path / "flaky.log"), "marker": str(marker)})
    procs.wait_status(url, flaky, "FAILED")
    browser.get(f"{ui.base}/runs/{flaky}")
    form = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "form.action")))
    assert f"engine runs retry {flaky}" in form.text
    second = browser.find_element(By.CSS_SELECTOR, 'details[data-key="second"]')
    assert "ERRORED" in second.text
    marker.touch()
    form.find_element(By.TAG_NAME, "button").click()
    wait.until(ec.alert_is_present()).accept()
    # Still FAILED until the POST lands: wait for COMPLETED rather than for any final status.
    procs.wait_until(lambda: procs.status(url, flaky) == "COMPLETED", WAIT, "the retried run")

    # Trigger with a payload that breaks the registered schema: an inline error, no run.
    browser.get(f"{ui.base}/trigger?job=typed")
    payload = wait.until(ec.presence_of_element_located((By.ID, "payload")))
    payload.send_keys('{"n": "not a number"}')
    cli = browser.find_element(By.ID, "trigger-cli").text
    assert cli.startswith("engine trigger typed --payload")
    assert '"n"' in browser.find_element(By.ID, "schema").text
    browser.find_element(By.CSS_SELECTOR, "#trigger-form button").click()
    wait.until(ec.alert_is_present()).accept()
    error = wait.until(ec.presence_of_element_located((By.ID, "trigger-error")))
    assert "is invalid" in error.text and "n" in error.text
    assert [
        r for r in procs.list(url, "--job", "typed") if r["payload"] == {"n": "not a number"}
    ] == []
