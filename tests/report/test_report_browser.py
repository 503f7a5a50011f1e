"""Open a built report from disk in real headless Chromium: every figure loads, no console errors.

Needs the Debian ``chromium`` and ``chromium-driver`` packages (CI installs them); skipped, with
the reason, only when those binaries are missing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import synthetic_results
from reslab.experiments import build_report
from reslab.report import write_results

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
MISSING = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        bool(MISSING),
        reason=f"headless browser test needs {' and '.join(MISSING)} "
        "(apt-get install chromium chromium-driver)",
    ),
]


@pytest.fixture
def driver(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1600",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    browser = webdriver.Chrome(service=service, options=options)
    browser.set_page_load_timeout(20)
    try:
        yield browser
    finally:
        browser.quit()


def test_report_renders_in_headless_chromium(tmp_path: Path, driver: Any) -> None:
    study = tmp_path / "study"
    results = synthetic_results(epochs=8)
    write_results(study, results)
    report = build_report(study)

    driver.get(report.resolve().as_uri())
    deadline = time.monotonic() + 10
    while driver.execute_script("return document.readyState") != "complete":
        assert time.monotonic() < deadline, "page did not finish loading in 10 s"
        time.sleep(0.05)

    images = driver.execute_script(
        "return Array.from(document.images).map(i => "
        "({src: i.src.slice(0, 22), complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}))"
    )
    assert len(images) == 5
    for image in images:
        assert image["src"] == "data:image/png;base64,"
        assert image["complete"] and image["w"] > 0 and image["h"] > 0, image
    assert results["verdict"]["text"] in driver.find_element("css selector", ".verdict").text

    logs = driver.get_log("browser")
    severe = [entry for entry in logs if entry.get("level") == "SEVERE"]
    assert not severe, severe

    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
