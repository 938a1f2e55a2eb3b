"""Fixtures for the dashboard's acceptance tests: a real `engine ui` process, and headless
Chromium (Debian's `chromium` + `chromium-driver`) driven by Selenium.

Every process started here runs in its own session with a hard deadline, and its whole group
is killed when the test ends.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dashboard import Dashboard


@pytest.fixture
def dashboards(tmp_path: Path) -> Iterator[list[Dashboard]]:
    """Start one with `dashboards.append(Dashboard(...).wait_ready())`; all are killed after."""
    started: list[Dashboard] = []
    try:
        yield started
    finally:
        for d in started:
            d.close()


def _chromium() -> tuple[str, str] | None:
    browser = next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless Chromium (Selenium WebDriver) with hard timeouts; quit after the test."""
    found = _chromium()
    if found is None:
        pytest.skip(
            "no Chromium found: install Debian's `chromium` and `chromium-driver` "
            "(apt-get install -y chromium chromium-driver); .ci/run does"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI containers run as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    service = Service(executable_path=found[1])
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()
        # quit() stops chromedriver; make sure nothing it started survives it.
        with contextlib.suppress(Exception):
            service.stop()
