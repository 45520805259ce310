"""The status dashboard (``GET /``) in a real headless Chromium, against the real daemon.

The daemon runs as a subprocess with ``--http 127.0.0.1:0``; one dropped CSV
lacks a column the extract stage requires (its run fails), another has it (its
run completes). Selenium reads the page's test hooks: ``.bar[data-state]`` on
the timeline, ``.failure`` items, ``body[data-loaded]`` / ``body[data-error]``.
A screenshot goes to ``test-artifacts/dashboard.png``.

Needs Debian's ``chromium`` and ``chromedriver`` (``sh tests/install-browser.sh``);
``AHGD_SKIP_BROWSER_TESTS=1`` skips it.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .harness import REPO, Daemon, query, wait_until, write_config

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts"
# Markup in a required column name: the error text carries it, the page must show it as text.
COLUMN = "<b>sa2_code</b>"
ERROR = f"missing columns: {COLUMN}"
TOKEN = "dashboard-test-token"
INSTALL_HINT = ("run `sh tests/install-browser.sh` to install chromium and chromium-driver, "
                "or set AHGD_SKIP_BROWSER_TESTS=1 to skip the browser tests")


@pytest.fixture
def browser():
    """A headless Debian Chromium under Selenium, never Selenium Manager (no internet); quit after."""
    if os.environ.get("AHGD_SKIP_BROWSER_TESTS") == "1":
        pytest.skip("AHGD_SKIP_BROWSER_TESTS=1 is set: browser tests skipped")
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.fail(f"the dashboard browser test needs chromium and chromedriver on PATH "
                    f"(found chromium={chromium}, chromedriver={chromedriver}); {INSTALL_HINT}",
                    pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.fail(f"the dashboard browser test needs selenium ({exc}); "
                    f"install it with: pip install 'selenium>=4.20'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1440,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _drop(folder: Path, name: str, text: str) -> None:
    """Write a CSV beside the drop folder's pattern, then rename it in (what a real upload does)."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{name}.part"
    part.write_text(text)
    part.rename(folder / name)


def _http_port(daemon: Daemon) -> int | None:
    for record in daemon.records():
        if record.get("event") == "http_status" and record.get("port"):
            return int(record["port"])
    assert daemon.proc.poll() is None, daemon.output()
    return None


def _finished_runs(state: Path) -> dict[str, str]:
    rows = query(state, "SELECT state, run_id FROM runs WHERE state IN ('COMPLETED', 'FAILED')")
    return dict(rows) if len(rows) == 2 else {}


def _screenshot(driver: Any, *paths: Path) -> None:
    """The whole page, not just the window: grow the window to the page's height first."""
    height = driver.execute_script(
        "return document.documentElement.scrollHeight + window.outerHeight - window.innerHeight")
    driver.set_window_size(1440, min(int(height or 900), 4000))
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))


def _attr(element: Any, name: str) -> str:
    return element.get_attribute(name) or ""


def _wait_for_timeline(driver: Any) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, 'body[data-loaded="1"] .bar'))
    except TimeoutException:
        error = driver.execute_script("return document.body.dataset.error")
        raise AssertionError(f"the timeline did not render within 30s; the page says: {error}") from None


def _check_timeline(driver: Any, failed: str, completed: str) -> int:
    """The failed run's extract bar is FAILED, the completed run's three bars COMPLETED."""
    from selenium.webdriver.common.by import By

    failed_bars = driver.find_elements(By.CSS_SELECTOR, f'.bar[data-run="{failed}"]')
    assert [(_attr(b, "data-stage"), _attr(b, "data-attempt"), _attr(b, "data-state"))
            for b in failed_bars if _attr(b, "data-stage") == "extract"] == [
        ("extract", "1", "FAILED")]
    done_bars = driver.find_elements(By.CSS_SELECTOR, f'.bar[data-run="{completed}"]')
    assert sorted((_attr(b, "data-stage"), _attr(b, "data-state")) for b in done_bars) == [
        ("extract", "COMPLETED"), ("load", "COMPLETED"), ("transform", "COMPLETED")]
    assert all(b.size["width"] >= 3 for b in failed_bars + done_bars)  # short attempts stay visible
    assert "missing columns" in _attr(failed_bars[0], "title")
    return len(driver.find_elements(By.CSS_SELECTOR, ".bar"))


def _check_failures(driver: Any, failed: str) -> None:
    """One failure item, for the failed run's extract stage, its error shown verbatim as text."""
    from selenium.webdriver.common.by import By

    failures = driver.find_elements(By.CSS_SELECTOR, ".failure")
    assert [(_attr(f, "data-run"), _attr(f, "data-stage")) for f in failures] == [(failed, "extract")]
    item = failures[0]
    assert "csvpipe" in item.text and failed in item.text
    assert item.find_element(By.CSS_SELECTOR, ".stage").text == "extract"
    error_box = item.find_element(By.CSS_SELECTOR, "pre.err")
    assert _attr(error_box, "textContent") == ERROR  # markup and all ...
    assert error_box.find_elements(By.XPATH, "./*") == []  # ... never parsed as HTML


def test_dashboard_shows_the_failed_and_the_completed_run(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    state = tmp_path / "state"
    # Any disk is "nearly full" at 0.01%: an open alert for the page to show.
    master = write_config(tmp_path, extract={"required": ["a", COLUMN]},
                          daemon=", disk_alert_percent: 0.01")
    daemon = Daemon(master, state, args=["--http", "127.0.0.1:0"],
                    extra_env={"AHGD_HTTP_TOKEN": TOKEN})
    try:
        daemon.wait_ready()
        port = wait_until(lambda: _http_port(daemon), 30, "the daemon's http_status log line")
        inbox = state / "inbox" / "csvpipe"
        _drop(inbox, "good.csv", f"a,{COLUMN}\n1,2\n3,4\n")
        _drop(inbox, "bad.csv", "a,b\n1,2\n")
        runs = wait_until(lambda: _finished_runs(state), 60, "one completed and one failed run")
        wait_until(lambda: any(r.get("event") == "system.disk_nearly_full" for r in daemon.records()),
                   30, "the disk alert")
        failed, completed = runs["FAILED"], runs["COMPLETED"]
        assert query(state, "SELECT stage, state, error FROM stage_runs WHERE run_id = ?",
                     (failed,)) == [("extract", "FAILED", ERROR)]

        with pytest.raises(urllib.error.HTTPError) as refused:  # the token is really required ...
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/runs", timeout=10)
        assert refused.value.code == 401
        # ... so the page's fetches get through only by sending it as "Authorization: Bearer".
        browser.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
        try:
            _wait_for_timeline(browser)
            assert browser.execute_script("return document.body.dataset.error") is None
            pause = browser.find_element(By.ID, "pause")
            pause.click()  # no re-render under our feet while we read the page
            assert browser.find_element(By.ID, "status").text.startswith("paused")
            bars = _check_timeline(browser, failed, completed)
            _check_failures(browser, failed)
            # the failure links to the run's log (issue 17), the token passed on
            href = _attr(browser.find_element(By.CSS_SELECTOR, ".failure a.loglink"), "href")
            assert f"/api/runs/{failed}/log?token=" in href
            with urllib.request.urlopen(href, timeout=10) as reply:
                assert "missing columns" in reply.read().decode()
            alerts = browser.find_elements(By.CSS_SELECTOR, ".alert")
            assert [_attr(a, "data-severity") for a in alerts
                    if "system.disk_nearly_full" in a.text] == ["error"]
            # No script error, no request refused (CSP, 401, 404) while the daemon was up.
            assert [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
        finally:
            _screenshot(browser, ARTIFACTS / "dashboard.png", tmp_path / "dashboard.png")

        # The daemon goes away: the page says so and keeps showing what it had.
        pause.click()
        assert daemon.stop() == 0
        message = WebDriverWait(browser, 30).until(
            lambda d: d.execute_script("return document.body.dataset.error"),
            "the page never reported the failed refresh")
        assert message.startswith("GET api/")
        assert browser.find_element(By.ID, "status").text.startswith("fetch failed")
        assert len(browser.find_elements(By.CSS_SELECTOR, ".bar")) == bars
    finally:
        if daemon.proc.poll() is None:
            daemon.kill()
