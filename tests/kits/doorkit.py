"""Both front doors on real servers on 127.0.0.1, for tests that run the same page through each."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asgikit import serving as serving_asgi
from waitress.server import create_server

TIMEOUT = 30  # seconds, for every socket call, join and barrier: a hang fails, never a figure
COOKIE = "zodbsession"
THREADS = 8


@contextmanager
def on_waitress(app: Any) -> Iterator[int]:
    """Serve a WSGI *app* on waitress with THREADS threads; its port."""
    server = create_server(app, host="127.0.0.1", port=0, threads=THREADS)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        server.close()
        server.task_dispatcher.shutdown(timeout=TIMEOUT)
        thread.join(timeout=TIMEOUT)


@contextmanager
def on_uvicorn(app: Any) -> Iterator[int]:
    """Serve an ASGI *app* on uvicorn; its port."""
    with serving_asgi(app) as server:
        yield server.port
