"""What tests import from each other by name: the fake clock, one in-process WSGI call, the browser wait.

They lived in ``tests/conftest.py``, imported as ``from sharedkit import ...``;
with a second ``conftest.py`` (``tests/quixote/``) that name means whichever
conftest pytest imported last, and the whole suite stopped at collection.
``tests/conftest.py`` re-exports them for its fixtures.
"""

from __future__ import annotations

import io
import wsgiref.util
from typing import Any

#: A moment far from zero and from any slot edge, so slot arithmetic is exercised.
EPOCH = 1_700_000_000.0


class FakeClock:
    """A clock the test moves by hand; call it to read the time."""

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def set(self, now: float) -> float:
        self.now = now
        return now



def wsgi_call(app: Any, path: str = "/", *, method: str = "GET", cookie: str | None = None,
         ) -> tuple[str, dict[str, str], bytes]:
    """One in-process WSGI request; returns status, headers (last of each name) and body."""
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path}
    wsgiref.util.setup_testing_defaults(environ)
    environ["wsgi.input"] = io.BytesIO(b"")
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    answer: dict[str, Any] = {}

    def start_response(status, headers, exc_info=None):
        answer["status"], answer["headers"] = status, dict(headers)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return answer["status"], answer["headers"], body



#: Upper bound, in seconds, of every browser wait: page loads, element look-ups.
BROWSER_WAIT = 10
