"""Cookie reading against a real ``zodbsession serve`` (waitress) on loopback.

A client that sends two ``Cookie`` headers (allowed by HTTP/2 and by
proxies that split them) has them joined by the server with ``", "``; the
session cookie in the second one must still be found.
"""

from __future__ import annotations

import http.client

from serverproc import Client, ServerProcess


def test_two_cookie_headers_are_read_as_one_list(tmp_path, env):
    with ServerProcess(tmp_path, env) as server:
        client = Client(server.url)
        assert client.json("POST", "/api/counter") == (200, {"count": 1})
        session_id = client.cookie()
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.putrequest("POST", "/api/counter")
            connection.putheader("Cookie", "theme=dark; lang=en")
            connection.putheader("Cookie", f"zodbsession={session_id}")
            connection.putheader("Content-Length", "0")
            connection.endheaders()
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
    assert response.status == 200, body
    assert body == b'{"count": 2}'
