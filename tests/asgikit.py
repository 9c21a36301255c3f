"""A real uvicorn on 127.0.0.1, in a thread of the test process, for the ASGI tests.

The server runs its own event loop in its own thread, on a socket bound to a
free loopback port, so that tests drive it with real HTTP clients (httpx,
raw sockets) and read the database directly between requests.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

#: Seconds a test waits for the server to start or stop, at most.
SERVER_WAIT = 10


class UvicornThread:
    """One uvicorn server serving *app*; ``url`` is where it listens."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="auto", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"uvicorn:{self.port}", daemon=True)

    def start(self) -> None:
        self.thread.start()
        for _ in range(SERVER_WAIT * 100):
            if self.server.started:
                return
            if not self.thread.is_alive():
                raise RuntimeError("uvicorn stopped while starting; see the log above")
            self.thread.join(0.01)
        raise RuntimeError(f"uvicorn did not start within {SERVER_WAIT} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(SERVER_WAIT)
        self.sock.close()
        if self.thread.is_alive():
            raise RuntimeError(f"uvicorn did not stop within {SERVER_WAIT} s")


@contextlib.contextmanager
def serving(app: Any) -> Iterator[UvicornThread]:
    """Serve *app* on a fresh loopback port for the block."""
    server = UvicornThread(app)
    server.start()
    try:
        yield server
    finally:
        server.stop()
