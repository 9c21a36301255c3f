"""zodbsession.flask.sessions through Flask's test client: the cookie, new, modified, permanent, Vary,
flash and session_transaction."""

from __future__ import annotations

import gc
from datetime import timedelta

from flask import request, session
from flaskkit import make_app, set_cookies

from zodbsession import SessionManager
from zodbsession.flask import ZODBSession


def test_cookie_is_named_by_session_cookie_name_and_sent_once(db):
    client = make_app(db, SESSION_COOKIE_NAME="basket").test_client()
    response = client.get("/put/a/1")
    cookies = set_cookies(response)
    assert len(cookies) == 1
    assert cookies[0].startswith("basket=")
    assert "HttpOnly" in cookies[0]
    assert "SameSite" not in cookies[0]  # Flask's default SESSION_COOKIE_SAMESITE is None: none sent
    assert "Max-Age" not in cookies[0]  # not permanent: a browser-session cookie
    # a changed session has its cookie sent again, the same id (as Flask does)
    assert set_cookies(client.get("/put/a/2")) == cookies
    assert set_cookies(client.get("/get/a")) == []  # only read: no cookie


def test_a_request_that_never_touches_the_session_writes_nothing(client, db):
    client.get("/peek")  # the first request makes the publisher, which makes the container
    before = db.lastTransaction()
    response = client.get("/peek")
    assert set_cookies(response) == []
    assert "Cookie" not in response.headers.get("Vary", "")
    assert db.lastTransaction() == before


def test_new_is_true_only_for_the_first_request(client):
    assert client.get("/new").text == "True"
    client.get("/put/k/v")
    assert client.get("/new").text == "False"


def test_setting_modified_stores_an_in_place_change(client):
    client.get("/cart/add/apple")
    assert client.get("/cart/add/pear").text == "apple,pear"


def test_logout_ends_the_session_and_deletes_the_cookie(client):
    client.get("/put/user/alice")
    response = client.get("/logout")
    assert any("Max-Age=0" in cookie for cookie in set_cookies(response))
    assert client.get("/get/user").text.startswith("-|")


def test_vary_cookie_is_sent_when_the_session_was_read(client):
    response = client.get("/get/anything")
    assert "Cookie" in response.headers["Vary"]


def test_flash_survives_the_redirect_and_is_shown_once(client):
    response = client.get("/flash/saved")
    assert response.status_code == 302
    assert client.get("/messages").text == "saved"
    assert client.get("/messages").text == "none"


def test_permanent_session_cookie_has_max_age_of_permanent_session_lifetime(db):
    client = make_app(db, PERMANENT_SESSION_LIFETIME=timedelta(days=7)).test_client()
    cookies = set_cookies(client.get("/permanent"))
    assert len(cookies) == 1
    assert f"Max-Age={7 * 86400}" in cookies[0]


def test_permanent_session_cookie_is_refreshed_each_request(db):
    client = make_app(db, PERMANENT_SESSION_LIFETIME=3600).test_client()
    first = set_cookies(client.get("/permanent"))
    again = set_cookies(client.get("/get/remember"))
    assert len(again) == 1
    assert "Max-Age=3600" in again[0]
    assert again[0].split(";")[0] == first[0].split(";")[0]  # the same session id


def test_refresh_each_request_off_sends_no_cookie_for_a_read(db):
    client = make_app(db, PERMANENT_SESSION_LIFETIME=3600, SESSION_REFRESH_EACH_REQUEST=False).test_client()
    client.get("/permanent")
    assert set_cookies(client.get("/get/remember")) == []


def test_session_transaction_reads_what_a_request_stored(client):
    client.get("/put/colour/blue")
    with client.session_transaction() as s:
        assert s["colour"] == "blue"
        assert not s.new


def test_session_transaction_on_a_fresh_client_hands_it_a_cookie(client):
    with client.session_transaction() as s:
        s["colour"] = "violet"
    assert client.get("/get/colour").text.startswith("violet|")


def test_session_transaction_changes_an_existing_session(client):
    client.get("/put/colour/blue")
    with client.session_transaction() as s:
        s["colour"] = "red"
    assert client.get("/get/colour").text == "red|blue"


def test_session_transaction_gives_its_connection_back(client, db):
    for _ in range(3):
        with client.session_transaction() as s:
            s["n"] = 1
    assert len(db.pool.available) == len(db.pool.all)  # every connection is back in the pool


def test_secure_false_still_marks_the_cookie_secure_over_https(db):
    client = make_app(db).test_client()
    cookie = set_cookies(client.get("/put/a/1", base_url="https://localhost"))[0]
    assert "Secure" in cookie
    cookie = set_cookies(make_app(db).test_client().get("/put/a/1"))[0]
    assert "Secure" not in cookie


def test_a_permanent_session_keeps_its_max_age_when_login_rotates_it(db):
    app = make_app(db, PERMANENT_SESSION_LIFETIME=600)

    @app.get("/login/<user>")
    def login(user: str) -> str:
        session.login(user)
        return "in"

    client = app.test_client()
    first = set_cookies(client.get("/permanent"))[0]
    rotated = set_cookies(client.get("/login/alice"))
    assert len(rotated) == 1
    assert "Max-Age=600" in rotated[0]
    assert rotated[0].split(";")[0] != first.split(";")[0]


def test_clear_empties_the_session_and_like_flask_deletes_its_cookie(client, db):
    client.get("/put/a/1")
    client.get("/put/b/2")
    with client.session_transaction() as s:
        session_id = s.id
        s.clear()
        assert len(s) == 0
    assert client.get_cookie("session") is None  # deleted, as Flask deletes an emptied session's
    with db.transaction() as conn:
        assert SessionManager().get(conn, session_id) is None  # and ended on the server
    with client.session_transaction() as s:
        assert dict(s) == {} and s.id != session_id


def test_clear_keeps_a_session_bound_to_a_user(client):
    client.get("/put/a/1")
    with client.session_transaction() as s:
        s.login("ada")
    with client.session_transaction() as s:
        session_id = s.id
        s.clear()
    with client.session_transaction() as s:
        assert s.id == session_id and s.user_id == "ada" and dict(s) == {}


def test_using_the_data_marks_the_session_accessed_whatever_flasks_version(app):
    """Flask 3.1.3 marks it from the request context; before that the session itself had to."""
    with app.test_request_context("/"):
        opened = app.session_interface.open_session(app, request)
        assert not opened.accessed
        opened.get("anything")
        assert opened.accessed


def test_a_session_used_outside_a_publisher_but_never_saved_gives_its_connection_back(app, db):
    """A bare test_request_context never calls save_session; collecting the session closes its connection."""
    with app.test_request_context("/"):
        session["scratch"] = 1  # opens the session's own connection
    gc.collect()
    assert len(db.pool.available) == len(db.pool.all)
    with db.transaction() as conn:  # and what it wrote was aborted, not committed
        assert ZODBSession.state(app).manager.container(conn, create=False) is None
