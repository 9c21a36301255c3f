"""Reads on one cookie run side by side, on both front doors, on real servers on 127.0.0.1.

A single-page app fires many requests at once on one cookie. Reads never
conflict (each connection reads its own snapshot), so a GET neither waits
for the session's other requests nor is refused; writes (and any retry)
still take the session's turn. "Side by side" is shown without timing: the
slow endpoint waits at a barrier that only opens when as many requests as
the server has threads are inside it at once. Run one at a time, the first
would wait there alone until the barrier's timeout broke it (a 500).
"""

from __future__ import annotations

import asyncio
import http.client
import math
import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from typing import Any

import pytest
from doorkit import COOKIE, THREADS, TIMEOUT, on_uvicorn, on_waitress
from ZODB import DB

from zodbsession import SessionMiddleware, SessionPublisher
from zodbsession.core.store import ROOT_KEY


class ReadPage:
    """``/make`` starts a session; ``/read`` reads it at a barrier of *parties*; ``/write`` counts."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=TIMEOUT)
        self.inside = 0
        self.most_inside = 0
        self.lock = threading.Lock()

    def read(self, session: Any) -> bytes:
        value = session.get("n")
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            self.barrier.wait()
        finally:
            with self.lock:
                self.inside -= 1
        return str(value).encode()

    def route(self, method: str, path: str, session: Any) -> tuple[str, bytes]:
        if path == "/make":
            session["n"] = 0
            return "200 OK", b"made"
        if path == "/write" and method == "POST":
            session["n"] += 1
            return "200 OK", str(session["n"]).encode()
        if path == "/read":
            return "200 OK", self.read(session)
        return "404 Not Found", b""


class WSGIPage(ReadPage):
    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        status, body = self.route(environ["REQUEST_METHOD"], environ["PATH_INFO"],
                                  environ["zodbsession.session"])
        start_response(status, [("Content-Type", "text/plain")])
        return [body]


class ASGIPage(ReadPage):
    def __init__(self, parties: int) -> None:
        super().__init__(parties)
        # The barrier blocks: wait at it in threads of the page's own, as many as its parties.
        self.threads = ThreadPoolExecutor(parties)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        session = scope["zodbsession.session"]
        if scope["path"] == "/read":
            loop = asyncio.get_running_loop()
            status, body = "200 OK", await loop.run_in_executor(self.threads, self.read, session)
        else:
            status, body = self.route(scope["method"], scope["path"], session)
        await send({"type": "http.response.start", "status": int(status.split()[0]),
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})


def call(port: int, method: str, path: str, cookie: str | None = None) -> tuple[int, str, Message]:
    """One request on a connection of its own: status, body and the headers (any case)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None,
                     headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
        response = conn.getresponse()
        return response.status, response.read().decode(), response.headers
    finally:
        conn.close()


def new_session(port: int) -> str:
    status, _body, headers = call(port, "POST", "/make")
    assert status == 200
    return headers["Set-Cookie"].split(";")[0].split("=", 1)[1]


def stored_n(db: DB, session_id: str) -> Any:
    with db.transaction() as conn:
        return conn.root()[ROOT_KEY].sessions[session_id]["n"]


DOORS = {
    "wsgi-waitress": (WSGIPage, lambda app, db: SessionPublisher(app, db), on_waitress),
    "asgi-uvicorn": (ASGIPage, lambda app, db: SessionMiddleware(app, db, max_connections=THREADS),
                     on_uvicorn),
}


@pytest.mark.parametrize("door", DOORS, ids=list(DOORS))
@pytest.mark.parametrize("parallel", [12, 64], ids=["12-gets", "64-gets"])
def test_parallel_gets_on_one_cookie_all_answer_200_side_by_side(db, door, parallel):
    """12 or 64 GETs at once on one cookie: every one 200 (no 429), many of them inside at once.

    The barrier's parties divide the count (4 for 12, 8 for 64), so every
    GET passes it only if that many run at the same time.
    """
    page_class, wrap, serve = DOORS[door]
    parties = math.gcd(parallel, THREADS)
    page = page_class(parties=parties)
    with serve(wrap(page, db)) as port:
        session_id = new_session(port)
        with ThreadPoolExecutor(parallel) as pool:
            answers = list(pool.map(lambda _: call(port, "GET", "/read", session_id), range(parallel)))
    assert Counter(status for status, _body, _headers in answers) == {200: parallel}
    assert {body for _status, body, _headers in answers} == {"0"}
    assert page.most_inside >= parties
    assert all(headers.get("Vary") == "Cookie" for _status, _body, headers in answers)


@pytest.mark.parametrize("door", DOORS, ids=list(DOORS))
def test_parallel_writes_on_one_cookie_keep_an_exact_count(db, door):
    """Writes still take the session's turn: 6 clients x 10 POSTs on one cookie count exactly 60."""
    page_class, wrap, serve = DOORS[door]
    page = page_class(parties=1)
    with serve(wrap(page, db)) as port:
        session_id = new_session(port)

        def writer(_: int) -> list[int]:
            return [call(port, "POST", "/write", session_id)[0] for _ in range(10)]

        with ThreadPoolExecutor(6) as pool:
            statuses = [status for answers in pool.map(writer, range(6)) for status in answers]
    assert Counter(statuses) == {200: 60}
    assert stored_n(db, session_id) == 60
