"""Both front doors on real servers on 127.0.0.1, for tests that run the same page through each."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from asgikit import serving as serving_asgi
from waitresskit import serving as serving_wsgi

TIMEOUT = 30  # seconds, for every socket call, join and barrier: a hang fails, never a figure
COOKIE = "zodbsession"
THREADS = 8


@contextmanager
def on_waitress(app: Any) -> Iterator[int]:
    """Serve a WSGI *app* on waitress with THREADS threads; its port."""
    with serving_wsgi(app, threads=THREADS) as port:
        yield port


@contextmanager
def on_uvicorn(app: Any) -> Iterator[int]:
    """Serve an ASGI *app* on uvicorn; its port."""
    with serving_asgi(app) as server:
        yield server.port
