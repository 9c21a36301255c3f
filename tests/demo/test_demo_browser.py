"""The demo page in a real headless Chromium, against ``zodbsession serve`` on loopback.

Needs Selenium (``pip install selenium``) and Debian's ``chromium`` and
``chromium-driver``; without them the test is skipped and says what is missing.
Selenium Manager is never asked to download anything: the driver is given by
path and ``SE_OFFLINE`` is set. Chromium's own background traffic is turned
off, as the machine reaches no network but loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browserkit import BROWSER_WAIT as WAIT
from browserkit import replaced
from serverproc import ServerProcess


@pytest.fixture
def server(tmp_path: Path, env: dict[str, str]) -> Iterator[ServerProcess]:
    """The real server with the bundled demo app, its database in this test's directory."""
    with ServerProcess(tmp_path, env) as process:
        yield process


def text(browser, element_id: str) -> str:
    """The visible text of the element with this id on the current page."""
    from selenium.webdriver.common.by import By

    return browser.find_element(By.ID, element_id).text.strip()


def status(browser) -> int:
    """The HTTP status of the document now shown (Navigation Timing's ``responseStatus``)."""
    return browser.execute_script(
        "return performance.getEntriesByType('navigation')[0].responseStatus;")


def click_and_wait(browser, element_id: str) -> None:
    """Click the button with this id and wait until the next document has loaded."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old_page = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, element_id).click()
    wait = WebDriverWait(browser, WAIT)
    wait.until(replaced(old_page))
    wait.until(lambda b: b.execute_script("return document.readyState") == "complete")


def test_demo_page_in_a_real_browser(driver, server, tmp_path):
    browser = driver
    from selenium.webdriver.common.by import By

    # The page loads, with a fresh session that is not stored yet.
    browser.get(server.url + "/")
    assert status(browser) == 200
    assert browser.title == "zodbsession demo"
    assert text(browser, "count") == "0"
    assert text(browser, "user") == "nobody"
    assert text(browser, "session-id") == "none yet"

    # Increment twice: Post/Redirect/Get lands back on / each time.
    for expected in (1, 2):
        click_and_wait(browser, "increment")
        assert browser.current_url == server.url + "/"
        assert status(browser) == 200
        assert text(browser, "count") == str(expected)
        assert text(browser, "flash") == f"Incremented: the counter is now {expected}."
    assert text(browser, "increments") == "2"
    anonymous_id = text(browser, "session-id")
    assert anonymous_id not in ("", "none yet")

    # Log in through the form: the user shows and the session id changes.
    field = browser.find_element(By.ID, "user-name")
    field.clear()
    field.send_keys("alice")
    click_and_wait(browser, "login")
    assert status(browser) == 200
    assert text(browser, "user") == "alice"
    assert text(browser, "flash") == "Logged in as alice: the session has a new id."
    logged_in_id = text(browser, "session-id")
    assert logged_in_id not in ("", "none yet", anonymous_id)
    assert text(browser, "count") == "2"  # the data moved to the new id

    # "Increment, then fail": the demo page again, answered 500 with the failure
    # said, and nothing of the change survives.
    click_and_wait(browser, "fail")
    assert browser.current_url == server.url + "/fail"
    assert status(browser) == 500
    assert "rolled its transaction back" in text(browser, "error")
    assert text(browser, "count") == "2"
    browser.get(server.url + "/")
    assert status(browser) == 200
    assert text(browser, "count") == "2"
    assert text(browser, "increments") == "2"
    assert text(browser, "user") == "alice"
    assert text(browser, "session-id") == logged_in_id
    assert "aborted" in server.log()

    # A picture of the page as a person sees it.
    screenshot = tmp_path / "demo-page.png"
    assert browser.save_screenshot(str(screenshot))
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 1000
