"""Hostile clients on the application's port, against a real ``zodbsession serve``.

Connections that trickle one header line at a time (slowloris) hold
waitress's connection slots; bodies and headers past the limits are refused
before they are read. Ordinary clients and the admin listener, which has a
socket map, a thread and a connection limit of its own, must still be served.
"""

from __future__ import annotations

import contextlib
import socket
import threading

import pytest
from adminkit import TOKEN, admin_request
from serverproc import Client, ServerProcess

TRICKLERS = 500


class Tricklers:
    """*count* connections to *port*, each sending one more header line every *interval* seconds.

    None of them ever finishes its headers. ``stop`` closes them all.
    """

    def __init__(self, port: int, count: int, interval: float = 1.0) -> None:
        self.sockets: list[socket.socket] = []
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(f"GET /api/session?n={n} HTTP/1.1\r\nHost: x\r\n".encode())
            self.sockets.append(sock)
        self.interval = interval
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _trickle(self) -> None:
        line = 0
        while not self.stopped.wait(self.interval):
            line += 1
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.send(f"X-Trickle-{line}: still here\r\n".encode())

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(30)
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def tricklers_on():
    made: list[Tricklers] = []

    def start(port: int, count: int) -> Tricklers:
        made.append(Tricklers(port, count))
        return made[-1]

    yield start
    for tricklers in made:
        tricklers.stop()


def test_500_trickling_connections_leave_clients_and_the_admin_served(tmp_path, env, tricklers_on):
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as server:
        tricklers_on(server.port, TRICKLERS)
        for _ in range(3):  # across several trickle rounds
            client = Client(server.url)
            assert client.json("POST", "/api/counter", ) == (200, {"count": 1})
            status, _headers, body = admin_request(server, "GET", "/metrics")
            assert status == 200 and b"zodbsession_" in body
        assert server.process.poll() is None


def test_a_full_application_port_does_not_lock_the_operator_out(tmp_path, env, tricklers_on):
    """With the application's connection limit used up, the admin listener still answers."""
    env = {**env, "ZODBSESSION_SERVER_CONNECTION_LIMIT": "20"}
    with ServerProcess(tmp_path, env, admin_token=TOKEN) as server:
        tricklers_on(server.port, 40)
        for _ in range(3):
            status, _headers, _body = admin_request(server, "GET", "/metrics")
            assert status == 200


def raw_request(port: int, head: bytes, timeout: float = 15) -> bytes:
    """Send *head* (request line and headers, no body) and read what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_a_body_over_the_limit_is_refused_before_it_is_sent(tmp_path, env):
    """Content-Length past ``publisher.max_request_body``: 413 without a byte of the body read."""
    env = {**env, "ZODBSESSION_PUBLISHER_MAX_REQUEST_BODY": "1000000"}
    with ServerProcess(tmp_path, env) as server:
        answer = raw_request(server.port, b"POST /api/counter HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Length: 300000000\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert Client(server.url).json("POST", "/api/counter")[0] == 200


def test_headers_over_the_limit_are_refused(tmp_path, env):
    env = {**env, "ZODBSESSION_SERVER_MAX_REQUEST_HEADER_SIZE": "8192"}
    with ServerProcess(tmp_path, env) as server:
        answer = raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
                                          + b"a" * 20000 + b"\r\n\r\n")
        assert answer.split(b" ", 2)[1] in (b"431", b"400"), answer[:200]
