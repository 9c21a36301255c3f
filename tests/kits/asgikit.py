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

import httpx
import uvicorn

#: Seconds a test waits for the server to start or stop, or for an answer, at most.
SERVER_WAIT = 10

#: One transport (connection pool) for every test client: making an httpx
#: client builds an SSL context unless given a transport, which under load
#: takes longer than the requests themselves. Cookie jars stay per client.
_TRANSPORT = httpx.HTTPTransport()


class _SharedTransport(httpx.BaseTransport):
    """The shared transport, left open when a client closes."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return _TRANSPORT.handle_request(request)


class UvicornThread:
    """One uvicorn server serving *app*; ``url`` is where it listens."""

    def __init__(self, app: Any) -> None:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only
        # when the listener says TCP, and without it each response waits ~40 ms
        # for the client's delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


def http_client(server: UvicornThread, cookie: str | None = None) -> httpx.Client:
    """An httpx client of *server* with a cookie jar of its own (holding *cookie*, if given)."""
    cookies = {"zodbsession": cookie} if cookie is not None else None
    return httpx.Client(base_url=server.url, timeout=SERVER_WAIT, transport=_SharedTransport(),
                        cookies=cookies)
