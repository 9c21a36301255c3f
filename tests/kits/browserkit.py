"""The settings of the real headless browser the ``driver`` fixture (tests/conftest.py) starts.

Here, not in conftest, so that browser tests can import them: a test module
importing ``conftest`` gets whichever folder's conftest was imported last.
"""

from __future__ import annotations

from typing import Any

#: Upper bound, in seconds, of every browser wait: page loads, element look-ups.
BROWSER_WAIT = 10

#: Chromium's own background traffic is turned off: this machine reaches no
#: network but loopback, and without these flags its connections are refused.
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1400",
)


def replaced(element: Any) -> Any:
    """A wait condition: *element*'s document has been replaced by the next one.

    Selenium's ``staleness_of`` knows one way a browser says so (a stale
    reference); Chromium, asked mid-navigation, can also answer that the node
    "does not belong to the document". Both mean the old page is gone.
    """
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    def check(_driver: Any) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return check
