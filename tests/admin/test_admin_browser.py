"""The admin page in a real headless Chromium, against ``zodbsession serve`` on loopback.

One real server process, two listeners: the demo application inside the
``SessionPublisher`` and the admin listener, switched on by its token. Users
log in on the application; an operator logs in to the admin page, finds a
user's session and revokes it; the user's cookie then no longer finds a
session on the application's listener. The dashboard is saved as a
screenshot (``/tmp/admin-screenshot.png``) once its charts have lines.

Needs Selenium and Debian's ``chromium`` and ``chromium-driver``; without
them the test is skipped and says what is missing (see ``conftest.driver``).
"""

from __future__ import annotations

import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browserkit import BROWSER_WAIT as WAIT
from browserkit import replaced
from serverproc import Client, ServerProcess

TOKEN = "browser-test-admin-token"
SCREENSHOT_COPY = Path("/tmp/admin-screenshot.png")
#: The charts draw lines from three samples; the server samples every 5 s.
CHARTS_WAIT = 30


@pytest.fixture
def server(tmp_path: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    """``zodbsession serve`` with the demo app and the admin listener on, its database here."""
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as process:
        yield process


class Traffic:
    """A user clicking the demo's counter a few times a second, on a thread, until stopped."""

    def __init__(self, url: str) -> None:
        self.client = Client(url)
        self.count = 0
        self.failures: list[Any] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        self._thread.join(WAIT)

    def _run(self) -> None:
        while not self._stopping.wait(0.2):
            status, answer = self.client.json("POST", "/api/counter")
            if status == 200:
                self.count = answer["count"]
            else:
                self.failures.append((status, answer))


def http_status(url: str, headers: dict[str, str] | None = None) -> int:
    """The status of a plain GET (urllib raises for 4xx: that is caught and answered)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=WAIT) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


def status(browser: Any) -> int:
    """The HTTP status of the document shown (Navigation Timing's ``responseStatus``)."""
    return browser.execute_script("return performance.getEntriesByType('navigation')[0].responseStatus;")


def text(browser: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text.strip()


def click_and_wait(browser: Any, element_id: str) -> None:
    """Click the element with this id and wait until the next document has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old_page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, element_id).click()
    wait = WebDriverWait(browser, WAIT)
    wait.until(replaced(old_page))
    wait.until(lambda b: b.execute_script("return document.readyState") == "complete")


def wait_for_chart_lines(browser: Any, url: str) -> None:
    """Reload the dashboard until every chart draws a line (three samples, about 10 s)."""
    from selenium.webdriver.common.by import By

    deadline = time.monotonic() + CHARTS_WAIT
    while True:
        charts = browser.find_elements(By.CSS_SELECTOR, ".chart svg")
        if len(charts) == 3 and all(c.find_elements(By.TAG_NAME, "polyline") for c in charts):
            return
        assert time.monotonic() < deadline, "the charts drew no lines"
        time.sleep(1)
        browser.get(url)


def test_an_operator_revokes_a_users_session_through_the_admin_page(driver, server, tmp_path):
    from selenium.webdriver.common.by import By

    browser = driver
    admin_url = server.admin_url

    # Users log in on the application listener; bob's clicks are traffic for the charts.
    alice = Client(server.url)
    assert alice.json("POST", "/api/login", {"user": "alice"})[1]["user"] == "alice"
    with Traffic(server.url) as bob:
        # Without the token, every admin URL is refused.
        assert http_status(admin_url + "/") == 401
        assert http_status(admin_url + "/metrics") == 401
        assert http_status(admin_url + "/metrics", {"Authorization": "Bearer wrong"}) == 401
        assert http_status(admin_url + "/metrics", {"Authorization": f"Bearer {TOKEN}"}) == 200
        browser.get(admin_url + "/")
        assert status(browser) == 401
        assert browser.find_elements(By.ID, "live-sessions") == []

        # The login form lets the operator in, and the page shows the live count.
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        click_and_wait(browser, "login")
        assert status(browser) == 200
        assert browser.current_url == admin_url + "/"
        assert text(browser, "live-sessions") == "2"
        cookies = {cookie["name"]: cookie for cookie in browser.get_cookies()}
        assert cookies["zodbsession_admin"]["httpOnly"] is True
        assert TOKEN not in cookies["zodbsession_admin"]["value"]

        wait_for_chart_lines(browser, admin_url + "/")
    assert bob.failures == [] and bob.count > 10
    screenshot = tmp_path / "admin-page.png"
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    shutil.copyfile(screenshot, SCREENSHOT_COPY)

    # Find alice's session and revoke it through the page.
    browser.find_element(By.ID, "user").send_keys("alice")
    click_and_wait(browser, "search-by-user")
    rows = browser.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert len(rows) == 1 and "alice" in rows[0].text
    revoke = rows[0].find_element(By.CSS_SELECTOR, "button[id^=revoke-]")
    click_and_wait(browser, revoke.get_attribute("id"))
    assert status(browser) == 200
    assert text(browser, "message") == "Revoked 1 session(s)."
    assert browser.find_elements(By.CSS_SELECTOR, "#results tbody tr") == []

    # Her cookie no longer finds a session on the application listener.
    session = alice.json("GET", "/api/session")[1]
    assert session["user"] is None and session["new"] is True
    assert bob.client.json("GET", "/api/session")[1]["data"] == {"count": bob.count}  # untouched

    browser.get(admin_url + "/")
    assert text(browser, "live-sessions") == "1"
