"""SessionPublisher and the cookie: safe defaults, policy, login, logout, bogus and expired cookies.
"""

from __future__ import annotations

from wsgiref.validate import validator

import pytest
from publisherkit import (
    COOKIE,
    app_from,
    client,
    create_session,
    issued_id,
    publisher,
    request,
    set_cookies,
    stored,
    stored_user,
    writer_app,
)

from zodbsession import (
    CookiePolicy,
    SessionManager,
)
from zodbsession.testing import ManualClock

# -- cookies ---------------------------------------------------------------------


def test_new_session_cookie_has_safe_defaults(database):
    response = request(client(publisher(app_from(writer_app), database)), method="POST",
                       params="a=1")
    [cookie] = set_cookies(response)
    assert cookie["name"] == COOKIE
    assert cookie["attrs"] == {"path": "/", "httponly": "", "samesite": "Lax"}


@pytest.mark.parametrize(("secure", "scheme", "expected"), [
    ("auto", "https", True),
    ("auto", "http", False),
    (True, "http", True),
    (False, "https", False),
], ids=["auto-https", "auto-http", "always", "never"])
def test_secure_flag_follows_policy_and_scheme(database, secure, scheme, expected):
    pub = publisher(app_from(writer_app), database, cookie=CookiePolicy(secure=secure))
    testapp = client(pub, extra_environ={"wsgi.url_scheme": scheme})
    [cookie] = set_cookies(request(testapp, method="POST", params="a=1"))
    assert ("secure" in cookie["attrs"]) is expected


def test_cookie_policy_name_path_samesite_and_max_age(database):
    policy = CookiePolicy(name="sid", path="/shop", max_age=3600, samesite="Strict",
                          domain="example.org")
    testapp = client(publisher(app_from(writer_app), database, cookie=policy))
    response = request(testapp, method="POST", params="a=1")
    [cookie] = set_cookies(response)
    assert cookie["name"] == "sid"
    assert cookie["attrs"] == {"max-age": "3600", "path": "/shop", "domain": "example.org",
                               "httponly": "", "samesite": "Strict"}
    # and the configured name is the one read back
    session_id = cookie["value"]
    testapp.publisher.app = validator(app_from(lambda env: env["zodbsession.session"]["a"]))
    assert request(testapp, cookie=f"sid={session_id}").text == "1"
    assert request(testapp, cookie=f"{COOKIE}={session_id}").status_int == 500  # KeyError


def test_plain_read_of_existing_session_sends_no_cookie_and_writes_nothing(database):
    testapp = client(publisher(app_from(writer_app), database))
    session_id = create_session(testapp, name="ada")
    before = database.storage.lastTransaction()
    testapp.publisher.app = validator(app_from(lambda env: env["zodbsession.session"]["name"]))
    response = request(testapp, cookie=f"{COOKIE}={session_id}")
    assert response.text == "ada"
    assert response.headers.getall("Set-Cookie") == []
    assert database.storage.lastTransaction() == before


READ_ONLY_ACTIONS = {
    "untouched": lambda session: "nothing",
    "get": lambda session: session.get("x"),
    "contains": lambda session: "x" in session,
    "is_new": lambda session: session.is_new,
    "id": lambda session: len(session.id),
    "iterate": lambda session: list(session),
}


@pytest.mark.parametrize("use", READ_ONLY_ACTIONS.values(), ids=READ_ONLY_ACTIONS.keys())
def test_new_session_only_read_sends_no_cookie_and_stores_nothing(database, use):
    pub = publisher(app_from(lambda env: use(env["zodbsession.session"])), database)
    before = database.storage.lastTransaction()
    response = request(client(pub))
    assert response.status_int == 200
    assert response.headers.getall("Set-Cookie") == []
    assert stored(database) == {}
    assert database.storage.lastTransaction() == before


def login_app(environ):
    session = environ["zodbsession.session"]
    path = environ["PATH_INFO"]
    if path == "/login":
        session.login("alice")
    elif path == "/logout":
        session.logout()
    elif path == "/write":
        session["cart"] = ["book"]
    return f"user={session.user_id} new={session.is_new} cart={session.get('cart')}"


def test_login_rotates_id_and_kills_the_old_one(database):
    testapp = client(publisher(app_from(login_app), database))
    old_id = issued_id(testapp.get("/write"))
    response = testapp.get("/login")
    new_id = issued_id(response)
    assert new_id != old_id
    assert response.text == "user=alice new=False cart=['book']"
    assert set(stored(database)) == {new_id}
    stale = request(testapp, "/", cookie=f"{COOKIE}={old_id}")
    assert stale.text == "user=None new=True cart=None"
    assert stale.headers.getall("Set-Cookie") == []
    fresh = request(testapp, "/", cookie=f"{COOKIE}={new_id}")
    assert fresh.text == "user=alice new=False cart=['book']"


def test_login_on_a_new_session_stores_it_under_a_fresh_id(database):
    testapp = client(publisher(app_from(login_app), database))
    response = testapp.get("/login")
    session_id = issued_id(response)
    assert set(stored(database)) == {session_id}
    assert stored_user(database, session_id) == "alice"


def test_logout_deletes_cookie_and_kills_the_session(database):
    testapp = client(publisher(app_from(login_app), database))
    testapp.get("/write")
    session_id = issued_id(testapp.get("/login"))
    response = request(testapp, "/logout", cookie=f"{COOKIE}={session_id}")
    [cookie] = set_cookies(response)
    assert cookie["name"] == COOKIE and cookie["value"] == ""
    assert cookie["attrs"]["max-age"] == "0"
    assert "1970" in cookie["attrs"]["expires"]
    assert {"path", "httponly", "samesite"} <= set(cookie["attrs"])
    assert stored(database) == {}
    again = request(testapp, "/", cookie=f"{COOKIE}={session_id}")
    assert again.text == "user=None new=True cart=None"


def test_logout_then_write_hands_out_a_new_session(database):
    testapp = client(publisher(app_from(login_app), database))
    old_id = issued_id(testapp.get("/login"))

    def action(environ):
        environ["zodbsession.session"].logout()
        environ["zodbsession.session"]["flash"] = "bye"
        return "ok"

    testapp.publisher.app = validator(app_from(action))
    new_id = issued_id(request(testapp, cookie=f"{COOKIE}={old_id}"))
    assert new_id != old_id
    assert stored(database) == {new_id: {"flash": "bye"}}


UNKNOWN_ID = "A" * 43
BOGUS_COOKIES = {
    "malformed": f"{COOKIE}=not-a-session-id",
    "too-long-id": f"{COOKIE}={'A' * 44}",
    "oversized-100KB": f"{COOKIE}={'a' * 100_000}",
    "unknown-well-formed": f"{COOKIE}={UNKNOWN_ID}",
    "many-cookies": "; ".join(f"c{i}=v{i}" for i in range(1000)) + f"; {COOKIE}={UNKNOWN_ID}",
    "unicode": f"{COOKIE}=" + "sess\u00e9\u2603".encode().decode("latin-1"),
    "quoted-unknown": f'{COOKIE}="{UNKNOWN_ID}"',
    "quoted-garbage": f'{COOKIE}="\\"\\\\\\"";{COOKIE}="',
    "empty-value": f"{COOKIE}=",
    "no-equals": f"{COOKIE}",
    "only-separators": ";;; ;=;==",
    "other-cookie-only": "theme=dark",
}


@pytest.mark.parametrize("cookie", BOGUS_COOKIES.values(), ids=BOGUS_COOKIES.keys())
def test_bogus_cookie_writes_nothing(database, cookie):
    testapp = client(publisher(app_from(writer_app), database))
    existing = create_session(testapp, keep="1")
    before = database.storage.lastTransaction()
    testapp.publisher.app = validator(app_from(
        lambda env: f"{env['zodbsession.session'].get('keep')} {env['zodbsession.session'].is_new}"))
    response = request(testapp, cookie=cookie)
    assert response.status_int == 200
    assert response.text == "None True"
    assert response.headers.getall("Set-Cookie") == []
    assert database.storage.lastTransaction() == before
    assert set(stored(database)) == {existing}


@pytest.mark.parametrize("cookie", BOGUS_COOKIES.values(), ids=BOGUS_COOKIES.keys())
def test_bogus_cookie_then_write_hands_out_a_fresh_valid_id(database, cookie):
    testapp = client(publisher(app_from(writer_app), database))
    response = request(testapp, cookie=cookie, method="POST", params="a=1")
    session_id = issued_id(response)
    assert len(session_id) == 43 and session_id != UNKNOWN_ID
    assert stored(database) == {session_id: {"a": "1"}}


@pytest.mark.parametrize("timeout", ["idle", "lifetime"])
def test_expired_cookie_writes_nothing(database, timeout):
    clock = ManualClock()
    manager = SessionManager(idle_timeout=1800, max_lifetime=3600, clock=clock)
    testapp = client(publisher(app_from(writer_app), database, manager=manager))
    session_id = create_session(testapp, keep="1")

    def action(environ):
        session = environ["zodbsession.session"]
        return f"{session.get('keep')} {session.is_new}"

    testapp.publisher.app = validator(app_from(action))
    cookie = f"{COOKIE}={session_id}"
    if timeout == "idle":
        clock.now += 1801
    else:
        for _ in range(3):  # keep it in use: only the absolute lifetime ends it
            clock.now += 1000
            assert request(testapp, cookie=cookie).text == "1 False"
        clock.now += 601
    before = database.storage.lastTransaction()
    response = request(testapp, cookie=cookie)
    assert response.text == "None True"
    assert response.headers.getall("Set-Cookie") == []
    assert database.storage.lastTransaction() == before


def _reader_app(environ):
    return repr(sorted(environ["zodbsession.session"].items()))


@pytest.mark.parametrize("first", [
    "not-an-id",
    "x" * 43,  # well formed, but names no session
], ids=["malformed-first", "unknown-first"])
def test_a_bad_first_cookie_of_the_name_does_not_hide_a_valid_second_one(database, first):
    session_id = create_session(client(publisher(app_from(writer_app), database)), a="1")
    testapp = client(publisher(app_from(_reader_app), database))
    before = stored(database)
    response = request(testapp, cookie=f"{COOKIE}={first}; {COOKIE}={session_id}")
    assert response.text == "[('a', '1')]"
    sent = [cookie["value"] for cookie in set_cookies(response)]
    assert sent in ([], [session_id]), "at most the found id again, to overwrite the bad one"
    assert stored(database) == before


def test_two_cookie_headers_joined_by_the_server_are_one_list(database):
    session_id = create_session(client(publisher(app_from(writer_app), database)), a="1")
    testapp = client(publisher(app_from(_reader_app), database))
    # PEP 3333 servers join repeated headers with ", ".
    response = request(testapp, cookie=f"other=1, {COOKIE}={session_id}")
    assert response.text == "[('a', '1')]"
