"""One WSGI request straight into an application, in process: no server, no WebTest.

For tests that only need status, headers and body of one call (limits,
merge through the publisher, the reliability soak's warm-up); the
publisher's own tests use ``publisherkit``'s validated WebTest clients.
"""

from __future__ import annotations

import io
import wsgiref.util
from typing import Any


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
