"""The uvicorn door bounds a request's head as waitress does: past ``max_request_header_size``, 431.

The same limit on both doors (``server.max_request_header_size``), answered
the same way: 431 and the connection closed, for one huge header and for
thousands of small ones. Real ``serve`` processes on loopback, one per door.
"""

from __future__ import annotations

import socket

import pytest
from serverproc import ServerProcess

pytest.importorskip("uvicorn")

ASGI_APP = """
async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

WSGI_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""

LIMIT = 16384


def status_of(port: int, head: bytes) -> int:
    """Send *head* (and the end of the headers); the status the server answers with."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + b"\r\n")
        received = b""
        while b"\r\n" not in received:
            chunk = sock.recv(4096)
            if not chunk:
                break
            received += chunk
    return int(received.split(b" ", 2)[1])


HEADS = {
    "small": b"GET / HTTP/1.1\r\nHost: x\r\n",
    "one-huge-header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2 * LIMIT) + b"\r\n",
    "thousands-of-headers": b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-%d: 1\r\n" % n for n in range(5000)),
}


@pytest.mark.parametrize("door", ["wsgi", "asgi"])
def test_both_doors_answer_a_head_over_the_limit_with_431(tmp_path, env, door):
    (tmp_path / "limitapp.py").write_text(ASGI_APP if door == "asgi" else WSGI_APP)
    env = {**env, "ZODBSESSION_SERVER_APP": "limitapp:app",
           "ZODBSESSION_SERVER_MAX_REQUEST_HEADER_SIZE": str(LIMIT)}
    with ServerProcess(tmp_path, env) as server:
        answers = {name: status_of(server.port, head) for name, head in HEADS.items()}
    assert answers == {"small": 200, "one-huge-header": 431, "thousands-of-headers": 431}
