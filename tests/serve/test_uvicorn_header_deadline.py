"""The uvicorn door closes connections that do not finish their headers, as waitress does.

uvicorn has no header timeout of its own: before ``header_deadline_protocol``
a connection that sent half a request line stayed open for ever, and enough
of them answered every client 503 (``limit_concurrency``). Real ``serve``
processes on loopback, with ``server.channel_timeout`` short enough to wait for.
"""

from __future__ import annotations

import select
import socket
import time

import pytest
from adminkit import TOKEN, admin_request
from serverproc import Client, ServerProcess

pytest.importorskip("uvicorn")

ASGI_APP = '''
async def app(scope, receive, send):
    session = scope["zodbsession.session"]
    session["n"] = session.get("n", 0) + 1
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(session["n"]).encode()})
'''

#: The channel_timeout of these servers, in seconds.
TIMEOUT = 2
#: How long a test waits for every stalled connection to be closed: generous, never a measurement.
PATIENCE = 60


@pytest.fixture
def asgi_server(tmp_path, env):
    (tmp_path / "slowapp.py").write_text(ASGI_APP)
    env = {**env, "ZODBSESSION_SERVER_APP": "slowapp:app", "ZODBSESSION_SERVER_CHANNEL_TIMEOUT": str(TIMEOUT),
           "ZODBSESSION_SERVER_CONNECTION_LIMIT": "200"}
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as server:
        yield server


def closed_by_server(sockets: list[socket.socket], patience: float) -> int:
    """Wait (at most *patience*) until the server closed every socket; how many it closed."""
    open_ = set(sockets)
    deadline = time.monotonic() + patience
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(list(open_), [], [], 1.0)
        for sock in readable:
            try:
                data = sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                open_.discard(sock)
    return len(sockets) - len(open_)


def test_connections_that_never_finish_their_headers_are_closed(asgi_server):
    stalled = []
    try:
        for n in range(100):
            sock = socket.create_connection(("127.0.0.1", asgi_server.port), timeout=10)
            if n % 2:
                sock.sendall(f"GET /?n={n} HTTP/1.1\r\nHost: x\r\n".encode())  # half the headers
            stalled.append(sock)  # the other half send nothing at all
        assert closed_by_server(stalled, PATIENCE) == 100
        client = Client(asgi_server.url)
        assert client.request("GET", "/")[0] == 200
        status, _headers, body = admin_request(asgi_server, "GET", "/metrics")
        assert status == 200 and b"zodbsession_" in body
    finally:
        for sock in stalled:
            sock.close()


def test_a_trickling_client_cannot_extend_the_deadline(asgi_server):
    """One header line a second keeps the connection busy, but not past channel_timeout."""
    with socket.create_connection(("127.0.0.1", asgi_server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        deadline = time.monotonic() + PATIENCE
        line, closed = 0, False
        while not closed and time.monotonic() < deadline:
            if select.select([sock], [], [], 0.5)[0]:
                try:
                    closed = not sock.recv(4096)
                except OSError:
                    closed = True
                continue
            line += 1
            try:
                sock.sendall(f"X-Trickle-{line}: still here\r\n".encode())
            except OSError:
                closed = True
        assert closed, "the trickling connection was never closed"


def test_a_keep_alive_connection_gets_the_deadline_again_for_its_next_request(asgi_server):
    with socket.create_connection(("127.0.0.1", asgi_server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the next request, never finished
        assert closed_by_server([sock], PATIENCE) == 1
