"""The ASGI contender of ``bench --http``: the counter app inside ``SessionMiddleware`` on uvicorn.

The same application as every other contender's (``workload.counter_app``:
``POST /count`` adds one to ``session["count"]`` and answers it, ``GET
/count`` answers it), written as a bare ASGI application so that what
differs from the ``zodbsession`` contender is only the front door and the
server: ``zodbsession.web.asgi.SessionMiddleware`` with its defaults, on uvicorn
(one process, one event loop) instead of the WSGI publisher on waitress.
``python -m bench.asgi_app PORT`` serves it on the storage
``ZODBSESSION_STORAGE_URI`` names; ``BENCH_ASGI_INLINE=0`` keeps every ZODB
step in a worker thread (``inline=False``: the door as it was before the
loop-safe steps, the ``zodbsession-asgi-threads`` contender).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from zodbsession import open_db
from zodbsession.asgi import SessionMiddleware


async def counter_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``workload.counter_app`` in ASGI: POST increments the session's count, GET reads it."""
    while (await receive()).get("more_body", False):
        pass  # the body (empty) was already read, and kept, by the middleware
    session = scope["zodbsession.session"]
    if scope["method"] == "POST":
        count = session.get("count", 0) + 1
        session["count"] = count
    else:
        count = session.get("count", 0)
    body = b"%d" % count
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def make_app() -> SessionMiddleware:
    """The contender: the counter inside the middleware, on ``ZODBSESSION_STORAGE_URI``."""
    inline = None if os.environ.get("BENCH_ASGI_INLINE", "") != "0" else False
    return SessionMiddleware(counter_app, open_db(os.environ.get("ZODBSESSION_STORAGE_URI",
                                                                 "file://var/Data.fs")), inline=inline)


def main(argv: list[str]) -> None:
    import uvicorn

    (port,) = argv
    # As zodbsession serve sets it up (INFO to stderr): the retries are logged.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(make_app(), host="127.0.0.1", port=int(port), log_level="warning", access_log=False)


if __name__ == "__main__":
    main(sys.argv[1:])
