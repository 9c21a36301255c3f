"""What a response built from a session carries, decided in one place (``web.headers``).

The rules on their own first (merging with what the application set), then
end to end on both front doors on real servers: a static page, a read, a
write, a new session and a logout, each with exactly the headers it must
have. A shared cache must never store a response that hands out a session
id, and must key any response that read the session by its cookie.
"""

from __future__ import annotations

import http.client
from email.message import Message
from typing import Any

import pytest
from doorkit import COOKIE, TIMEOUT, on_uvicorn, on_waitress

from zodbsession import CookiePolicy, SessionMiddleware, SessionPublisher
from zodbsession.core.attempt import SessionUse
from zodbsession.web.headers import session_headers

POLICY = CookiePolicy()


def names(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


# -- the rules --------------------------------------------------------------------------------


def test_a_response_that_never_used_the_session_is_left_as_it_is():
    app = [("Content-Type", "text/css"), ("Cache-Control", "public, max-age=3600")]
    assert session_headers(app, POLICY, SessionUse(), https=False) == app


def test_a_read_varies_on_the_cookie_and_stays_cacheable_per_user():
    headers = session_headers([("Cache-Control", "max-age=60")], POLICY, SessionUse(used=True), https=False)
    assert names(headers, "Vary") == ["Cookie"]
    assert names(headers, "Cache-Control") == ["max-age=60"]
    assert names(headers, "Set-Cookie") == []


@pytest.mark.parametrize(("app_vary", "merged"), [
    (["Accept-Encoding"], "Accept-Encoding, Cookie"),
    (["Accept-Encoding", "Origin"], "Accept-Encoding, Origin, Cookie"),
    (["cookie"], "cookie"),
    (["*"], "*"),
], ids=["one-field", "two-lines", "already-cookie", "star"])
def test_vary_is_merged_into_one_line_with_the_applications(app_vary, merged):
    app = [("Vary", value) for value in app_vary]
    headers = session_headers(app, POLICY, SessionUse(used=True), https=False)
    assert names(headers, "Vary") == [merged]


@pytest.mark.parametrize(("app_cache", "merged"), [
    ([], "private"),
    (["public, max-age=60"], "private, max-age=60"),
    (["max-age=60, s-maxage=600"], "private, max-age=60"),
    (['private="Set-Cookie", no-cache'], "private, no-cache"),
    (["no-store"], "no-store"),
    (["private, max-age=5"], "private, max-age=5"),
], ids=["none", "public", "s-maxage", "private-field", "no-store", "already-private"])
def test_a_set_cookie_response_is_kept_out_of_shared_caches_never_weakening_the_app(app_cache, merged):
    app = [("Cache-Control", value) for value in app_cache]
    headers = session_headers(app, POLICY, SessionUse("a" * 43, used=True), https=False)
    assert names(headers, "Cache-Control") == [merged]
    assert names(headers, "Vary") == ["Cookie"]
    assert names(headers, "Set-Cookie")[0].startswith(f"{COOKIE}={'a' * 43}; ")


def test_deleting_the_cookie_is_private_too_even_if_the_session_was_not_read():
    headers = session_headers([], POLICY, SessionUse(False), https=True)
    assert names(headers, "Set-Cookie")[0].startswith(f"{COOKIE}=; Max-Age=0")
    assert names(headers, "Cache-Control") == ["private"]
    assert names(headers, "Vary") == ["Cookie"]


# -- end to end, both doors -----------------------------------------------------------------


def route(path: str, session: Any) -> list[tuple[str, str]]:
    """The page's work on *path*; its own headers."""
    if path == "/new":
        session["n"] = 1
        return [("Cache-Control", "public, max-age=60")]
    if path == "/write":
        session["n"] = session["n"] + 1
    elif path == "/read":
        session.get("n")
    elif path == "/logout":
        session.invalidate()
    return [("Cache-Control", "public, max-age=60"), ("Vary", "Accept-Encoding")]


def wsgi_page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    headers = route(environ["PATH_INFO"], environ["zodbsession.session"])
    start_response("200 OK", [("Content-Type", "text/plain"), *headers])
    return [b"ok"]


async def asgi_page(scope: dict[str, Any], receive: Any, send: Any) -> None:
    headers = route(scope["path"], scope["zodbsession.session"])
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            *((k.encode(), v.encode()) for k, v in headers)]})
    await send({"type": "http.response.body", "body": b"ok"})


DOORS = {
    "wsgi-waitress": (lambda db: SessionPublisher(wsgi_page, db), on_waitress),
    "asgi-uvicorn": (lambda db: SessionMiddleware(asgi_page, db), on_uvicorn),
}


def get(port: int, path: str, cookie: str | None) -> Message:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("POST" if path != "/read" and path != "/static" else "GET", path,
                     headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        return response.headers
    finally:
        conn.close()


@pytest.mark.parametrize("door", DOORS, ids=list(DOORS))
def test_each_kind_of_response_carries_exactly_its_session_headers(db, door):
    wrap, serve = DOORS[door]
    with serve(wrap(db)) as port:
        new = get(port, "/new", None)
        session_id = new["Set-Cookie"].split(";")[0].split("=", 1)[1]
        static = get(port, "/static", session_id)
        read = get(port, "/read", session_id)
        write = get(port, "/write", session_id)
        logout = get(port, "/logout", session_id)
    # A new session: its id out, never into a shared cache.
    assert new.get_all("Cache-Control") == ["private, max-age=60"]
    assert new.get_all("Vary") == ["Cookie"]
    # A page that never touched the session: as the application made it, cacheable.
    assert static.get_all("Cache-Control") == ["public, max-age=60"]
    assert static.get_all("Vary") == ["Accept-Encoding"]
    assert static.get_all("Set-Cookie") is None
    # A read and a write of the session: keyed by the cookie, no Set-Cookie.
    for used in (read, write):
        assert used.get_all("Vary") == ["Accept-Encoding, Cookie"]
        assert used.get_all("Cache-Control") == ["public, max-age=60"]
        assert used.get_all("Set-Cookie") is None
    # A logout deletes the cookie: private.
    assert logout["Set-Cookie"].startswith(f"{COOKIE}=; Max-Age=0")
    assert logout.get_all("Cache-Control") == ["private, max-age=60"]
    assert logout.get_all("Vary") == ["Accept-Encoding, Cookie"]
