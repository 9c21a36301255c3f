"""The ASGI contender of the HTTP section: the demo's two API endpoints on uvicorn.

A bare ASGI application (no framework, so that what differs from the WSGI
run is the front door and the server) inside ``zodbsession.asgi.SessionMiddleware``
with its defaults: ``POST /api/counter`` adds one to the session's counter and
to a ``Length`` of everyone's increments (as the demo app does, one
transaction) and answers ``{"count": n}``; ``GET /api/session`` answers
``{"data": {...}}``, reading only. ``python -m bench.asgi_app`` serves it on
uvicorn (one process, one event loop) with the environment ``zodbsession
serve`` reads: ``ZODBSESSION_SERVER_PORT`` and ``ZODBSESSION_STORAGE_URI``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from BTrees.Length import Length

from zodbsession import open_db
from zodbsession.asgi import SessionMiddleware, run_in_connection

#: Where the demo app keeps everyone's increments, the same key.
INCREMENTS_KEY = "zodbsession.demo.increments"


def _increments(connection: Any) -> Length:
    root = connection.root()
    length = root.get(INCREMENTS_KEY)
    if length is None:
        length = root[INCREMENTS_KEY] = Length()
    return length


async def counter_api(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The two endpoints; anything else is 404."""
    while (await receive()).get("more_body", False):
        pass  # the body, replayed by the middleware, is not used
    session = scope["zodbsession.session"]
    route = (scope["method"], scope["path"])
    if route == ("POST", "/api/counter"):
        session["count"] = session.get("count", 0) + 1
        (await run_in_connection(_increments)).change(1)
        status, answer = 200, {"count": session["count"]}
    elif route == ("GET", "/api/session"):
        status, answer = 200, {"data": {key: session[key] for key in session}}
    else:
        status, answer = 404, {"error": "not found"}
    body = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def make_app() -> SessionMiddleware:
    """The contender: the API inside the middleware, on the storage the environment names."""
    db = open_db(os.environ.get("ZODBSESSION_STORAGE_URI", "file://var/Data.fs"))
    return SessionMiddleware(counter_api, db)


def main() -> None:
    import uvicorn

    port = int(os.environ.get("ZODBSESSION_SERVER_PORT", "8080"))
    uvicorn.run(make_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
