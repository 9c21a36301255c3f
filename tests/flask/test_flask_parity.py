"""Flask's own session and flash tests, ported: what ``flask.session`` does with Flask's cookie
sessions, it does with ``ZODBSession(app)`` (``test_flask_own_suite.py`` runs the originals
when Flask's sdist is at hand; these need nothing downloaded).

Ported from Flask 3.1's ``tests/test_basic.py`` and ``tests/test_testing.py``
(BSD-3-Clause), with the extension applied in the ``app`` fixture, and the
cases zodbsession adds: ``SameSite=None`` refused without ``Secure``, the
emptied session ended on the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import flask
import pytest
from flask.globals import request_ctx
from markupsafe import Markup
from werkzeug.http import parse_date

from zodbsession import SessionManager
from zodbsession.core.errors import ConfigError
from zodbsession.flask import ZODBSession


@pytest.fixture
def app() -> Iterator[flask.Flask]:
    app = flask.Flask("flask_parity")
    app.config.update(TESTING=True, ZODBSESSION_URI="memory://", ZODBSESSION_JANITOR_INTERVAL=0)
    ZODBSession(app)
    yield app
    app.extensions["zodbsession"].close()


@pytest.fixture
def client(app):
    return app.test_client()


def stored_count(app) -> int:
    state = ZODBSession.state(app)
    with state.get_db().transaction() as conn:
        container = SessionManager().container(conn, create=False)
        return 0 if container is None else len(container)


def test_session_accessed_sets_vary_cookie_and_untouched_does_not(app, client):
    @app.post("/")
    def do_set():
        flask.session["value"] = flask.request.form["value"]
        return "value set"

    @app.get("/")
    def do_get():
        return flask.session.get("value", "None")

    @app.get("/nothing")
    def do_nothing():
        return ""

    with client:
        rv = client.get("/nothing")
        assert "cookie" not in rv.vary
        assert not request_ctx._session.accessed and not request_ctx._session.modified
    with client:
        rv = client.post(data={"value": "42"})
        assert "cookie" in rv.vary
        assert request_ctx._session.accessed and request_ctx._session.modified
    with client:
        rv = client.get()
        assert rv.text == "42" and "cookie" in rv.vary
        assert request_ctx._session.accessed and not request_ctx._session.modified
    with client:
        rv = client.get("/nothing")  # carries the cookie, never uses the session
        assert "cookie" not in rv.vary
        assert not request_ctx._session.accessed and not request_ctx._session.modified


def test_cookie_path_is_application_root_read_at_the_request(app, client):
    app.config.update(APPLICATION_ROOT="/foo")  # after the extension was installed

    @app.route("/")
    def index():
        flask.session["testing"] = 42
        return "Hello World"

    rv = client.get("/", "http://example.com:8080/foo")
    assert "path=/foo" in rv.headers["set-cookie"].lower()


def test_cookie_settings_partitioned_domain_and_the_deletion_of_an_emptied_session(app, client):
    app.config.update(SERVER_NAME="www.example.com:8080", APPLICATION_ROOT="/test",
                      SESSION_COOKIE_DOMAIN=".example.com", SESSION_COOKIE_HTTPONLY=False,
                      SESSION_COOKIE_SECURE=True, SESSION_COOKIE_PARTITIONED=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH="/")

    @app.route("/")
    def index():
        flask.session["testing"] = 42
        return "Hello World"

    @app.route("/clear")
    def clear():
        flask.session.pop("testing", None)
        return "Goodbye World"

    rv = client.get("/", "http://www.example.com:8080/test/")
    cookie = rv.headers["set-cookie"].lower()
    for part in ("domain=example.com", "path=/", "secure", "samesite=lax", "partitioned"):
        assert part in cookie
    assert "httponly" not in cookie
    assert stored_count(app) == 1
    rv = client.get("/clear", "http://www.example.com:8080/test/")
    cookie = rv.headers["set-cookie"].lower()
    assert "session=;" in cookie and "max-age=0" in cookie
    for part in ("domain=example.com", "path=/", "secure", "samesite=lax", "partitioned"):
        assert part in cookie
    assert rv.headers["Vary"] == "Cookie"
    assert stored_count(app) == 0  # ended on the server too


def test_samesite_none_sends_no_attribute_and_the_string_none_needs_secure(app, client):
    @app.route("/")
    def index():
        flask.session["testing"] = 42
        return "Hello World"

    app.config.update(SESSION_COOKIE_SAMESITE="invalid")
    with pytest.raises(ValueError, match="SESSION_COOKIE_SAMESITE"):
        client.get("/")
    app.config.update(SESSION_COOKIE_SAMESITE=None)
    assert "samesite" not in client.get("/").headers["set-cookie"].lower()
    app.config.update(SESSION_COOKIE_SAMESITE="Strict")
    assert "samesite=strict" in client.get("/").headers["set-cookie"].lower()
    app.config.update(SESSION_COOKIE_SAMESITE="Lax")
    assert "samesite=lax" in client.get("/").headers["set-cookie"].lower()
    app.config.update(SESSION_COOKIE_SAMESITE="None")
    with pytest.raises(ConfigError, match=r"^SESSION_COOKIE_SAMESITE: 'None' needs secure=True"):
        client.get("/")
    app.config.update(SESSION_COOKIE_SECURE=True)
    cookie = client.get("/", "https://localhost/").headers["set-cookie"]
    assert "; SameSite=None" in cookie and "; Secure" in cookie


def test_partitioned_without_secure_is_refused_naming_the_key():
    app = flask.Flask("partitioned")
    app.config.update(ZODBSESSION_URI="memory://", SESSION_COOKIE_PARTITIONED=True)
    with pytest.raises(ConfigError, match=r"^SESSION_COOKIE_PARTITIONED: needs secure=True"):
        ZODBSession(app)


def test_permanent_session_cookie_has_expires_beside_max_age(app, client):
    permanent = True

    @app.route("/")
    def index():
        flask.session["test"] = 42
        flask.session.permanent = permanent
        return ""

    @app.route("/test")
    def test():
        return str(flask.session.permanent)

    rv = client.get("/")
    match = re.search(r"(?i)\bexpires=([^;]+)", rv.headers["set-cookie"])
    expires = parse_date(match.group(1))
    expected = datetime.now(UTC) + app.permanent_session_lifetime
    assert (expires.year, expires.month, expires.day) == (expected.year, expected.month, expected.day)
    max_age = int(app.permanent_session_lifetime.total_seconds())
    assert f"Max-Age={max_age}" in rv.headers["set-cookie"]
    assert client.get("/test").data == b"True"
    permanent = False
    rv = client.get("/")
    assert "set-cookie" in rv.headers
    assert re.search(r"(?i)\b(expires|max-age)=", rv.headers["set-cookie"]) is None


def test_session_written_in_after_request_is_stored(app, client):
    @app.after_request
    def modify_session(response):
        flask.session["foo"] = 42
        return response

    @app.route("/")
    def dump_session_contents():
        return repr(flask.session.get("foo"))

    assert client.get("/").data == b"None"
    assert client.get("/").data == b"42"


def test_session_keeps_special_types(app, client):
    now = datetime.now(UTC).replace(microsecond=0)

    @app.route("/")
    def put():
        flask.session.update(t=(1, 2, 3), b=b"\xff", m=Markup("<html>"), d=now, tag={" t": "not-a-tuple"})
        return "", 204

    with client:
        client.get("/")
        s = flask.session
        assert s["t"] == (1, 2, 3) and type(s["b"]) is bytes and type(s["m"]) is Markup
        assert s["d"] == now and s["tag"] == {" t": "not-a-tuple"}


@pytest.mark.parametrize(("permanent", "refresh", "expect_header"), [
    (True, True, True), (True, False, False), (False, True, False), (False, False, False)])
def test_unchanged_session_cookie_is_refreshed_as_session_refresh_each_request_says(
        app, permanent, refresh, expect_header):
    app.config["SESSION_REFRESH_EACH_REQUEST"] = refresh

    @app.route("/bump")
    def bump():
        rv = flask.session["foo"] = flask.session.get("foo", 0) + 1
        flask.session.permanent = permanent
        return str(rv)

    @app.route("/read")
    def read():
        return str(flask.session.get("foo", 0))

    @app.route("/ignored")
    def ignored():
        return ""

    with app.test_client() as c:
        assert [c.get("/bump").data for _ in range(3)] == [b"1", b"2", b"3"]
        rv = c.get("/read")
        assert rv.data == b"3"
        assert ("set-cookie" in rv.headers) == expect_header
        rv = c.get("/ignored")  # the view never uses the session: refreshed all the same
        assert ("set-cookie" in rv.headers) == expect_header
        assert ("Vary" in rv.headers) == expect_header


def test_vary_cookie_once_beside_the_apps_own_vary(app, client):
    @app.route("/set")
    def set_session():
        flask.session["test"] = "test"
        return ""

    @app.route("/get")
    def get():
        return flask.session.get("test")

    @app.route("/getitem")
    def getitem():
        return flask.session["test"]

    @app.route("/setdefault")
    def setdefault():
        return flask.session.setdefault("test", "default")

    @app.route("/clear")
    def clear():
        flask.session.clear()
        return ""

    @app.route("/vary-cookie-header-set")
    def vary_cookie_header_set():
        response = flask.Response()
        response.vary.add("Cookie")
        flask.session["test"] = "test"
        return response

    @app.route("/vary-header-set")
    def vary_header_set():
        response = flask.Response()
        response.vary.update(("Accept-Encoding", "Accept-Language"))
        flask.session["test"] = "test"
        return response

    @app.route("/no-vary-header")
    def no_vary_header():
        return ""

    def expect(path, header_value="Cookie"):
        rv = client.get(path)
        if header_value:
            assert rv.headers.get_all("Vary") == [header_value]
        else:
            assert "Vary" not in rv.headers

    for path in ("/set", "/get", "/getitem", "/setdefault", "/clear", "/vary-cookie-header-set"):
        expect(path)
    expect("/vary-header-set", "Accept-Encoding, Accept-Language, Cookie")
    expect("/no-vary-header", None)


def test_flashes_and_their_categories(app):
    @app.route("/")
    def index():
        flask.flash("Hello World")
        flask.flash("Hello World", "error")
        flask.flash(Markup("<em>Testing</em>"), "warning")
        return ""

    @app.route("/with_categories/")
    def with_categories():
        return repr(flask.get_flashed_messages(with_categories=True))

    @app.route("/filtered/")
    def filtered():
        return repr(flask.get_flashed_messages(category_filter=["message", "warning"]))

    client = app.test_client()
    client.get("/")
    assert client.get("/with_categories/").text == repr(
        [("message", "Hello World"), ("error", "Hello World"), ("warning", Markup("<em>Testing</em>"))])
    assert client.get("/with_categories/").text == "[]"  # taken once
    client = app.test_client()
    client.get("/")
    assert client.get("/filtered/").text == repr(["Hello World", Markup("<em>Testing</em>")])


def test_flash_marks_the_session_modified(app):
    with app.test_request_context():
        assert not flask.session.modified
        flask.flash("Zap")
        flask.session.modified = False
        flask.flash("Zip")
        assert flask.session.modified
        assert list(flask.get_flashed_messages()) == ["Zap", "Zip"]


def test_session_transaction_hands_the_client_its_session(app, client):
    @app.route("/")
    def index():
        return str(flask.session["foo"])

    with client:
        with client.session_transaction() as sess:
            assert len(sess) == 0
            sess["foo"] = [42]
            assert len(sess) == 1
        assert client.get("/").data == b"[42]"
        with client.session_transaction() as sess:
            assert len(sess) == 1
            assert sess["foo"] == [42]
