"""Tests for request_session.py: the request's lazy view forwards the session
features, and tells the publisher which cookie to send and for how long."""

from __future__ import annotations

from datetime import timedelta

import pytest

from zodbsession.core.errors import InvalidUserId
from zodbsession.core.manager import MAX_USER_ID_LENGTH
from zodbsession.core.request_session import RequestSession
from zodbsession.core.session import new_session_id
from zodbsession.core.store import get_container
from zodbsession.testing import make_client
from zodbsession.web.cookies import CookiePolicy


def _commit(conn) -> None:
    conn.transaction_manager.commit()


@pytest.fixture
def stored_id(manager, memory_db, connect) -> str:
    """The id of a committed session with one value."""
    conn = connect(memory_db)
    session = manager.new(conn)
    session["a"] = 1
    _commit(conn)
    return session.id


def test_created_is_the_sessions_start(manager, memory_db, connect, clock, stored_id):
    start = clock()
    clock.advance(500)
    view = RequestSession(manager, connect(memory_db), stored_id)
    assert view.created == start
    assert RequestSession(manager, connect(memory_db), None).created == clock()


def test_flash_and_csrf_are_forwarded_and_survive_the_commit(manager, memory_db, connect, stored_id):
    conn = connect(memory_db)
    view = RequestSession(manager, conn, stored_id)
    view.flash("saved")
    view.flash("oops", "error")
    token = view.get_csrf_token()
    _commit(conn)
    later = RequestSession(manager, connect(memory_db), stored_id)
    assert later.peek_flash("error") == ["oops"]
    assert later.pop_flash() == ["saved"]
    assert later.pop_flash() == []
    assert later.check_csrf_token(token)
    assert not later.check_csrf_token(later.new_csrf_token() + "x")


def test_flash_on_a_cookieless_request_stores_a_new_session(manager, memory_db, connect):
    conn = connect(memory_db)
    view = RequestSession(manager, conn, None)
    view.flash("welcome")
    assert view.cookie_to_send() == view.id
    _commit(conn)
    assert RequestSession(manager, connect(memory_db), view.id).pop_flash() == ["welcome"]


def test_changing_the_expiry_resends_the_cookie_with_its_max_age(manager, memory_db, connect, stored_id):
    view = RequestSession(manager, connect(memory_db), stored_id)
    assert view.cookie_to_send() is None
    assert view.cookie_max_age() is None
    view.set_expiry(0)
    assert view.cookie_to_send() == stored_id
    assert view.cookie_max_age() == "session"
    assert view.get_expire_at_browser_close()


def test_setting_the_same_expiry_sends_no_cookie(manager, memory_db, connect, stored_id):
    conn = connect(memory_db)
    RequestSession(manager, conn, stored_id).set_expiry(timedelta(days=1))
    _commit(conn)
    again = RequestSession(manager, connect(memory_db), stored_id)
    age = again.get_expiry_age()
    assert age == 86400
    assert again.get_expiry_date().timestamp() == pytest.approx(manager.clock() + 86400)
    again.set_expiry(manager.get_expiry_date(manager.get(connect(memory_db), stored_id)))
    assert again.cookie_to_send() is None


def test_logout_after_set_expiry_deletes_the_cookie(manager, memory_db, connect, stored_id):
    view = RequestSession(manager, connect(memory_db), stored_id)
    view.set_expiry(600)
    view.logout()
    assert view.cookie_to_send() is False


def test_login_refuses_a_too_long_user_id_and_stores_nothing(manager, memory_db, connect):
    conn = connect(memory_db)
    view = RequestSession(manager, conn, None)
    with pytest.raises(InvalidUserId):
        view.login("m" * (MAX_USER_ID_LENGTH + 1))
    assert view.user_id is None
    assert view.cookie_to_send() is None
    _commit(conn)
    assert get_container(conn, create=False) is None


def test_login_at_the_limit_works(manager, memory_db, connect):
    conn = connect(memory_db)
    view = RequestSession(manager, conn, None)
    view.login("m" * MAX_USER_ID_LENGTH)
    _commit(conn)
    assert get_container(conn).user_session_ids("m" * MAX_USER_ID_LENGTH) == [view.id]


def test_a_stale_first_cookie_falls_back_to_a_live_later_one(manager, memory_db, connect, stored_id):
    """Two cookies of one name (say, for two paths): the first naming a live session wins."""
    stale = new_session_id()
    view = RequestSession(manager, connect(memory_db), stale, more_ids=[stored_id])
    assert view["a"] == 1
    assert not view.is_new
    assert view.cookie_to_send() == stored_id  # the client's first cookie is put right


def test_no_live_cookie_among_several_starts_a_new_session(manager, memory_db, connect):
    view = RequestSession(manager, connect(memory_db), new_session_id(), more_ids=[new_session_id()])
    assert view.is_new


# -- through the publisher: the cookie follows the session's own expiry ---------------------


def _expiry_app(environ, start_response):
    session = environ["zodbsession.session"]
    value = environ["QUERY_STRING"]
    if value:
        session.set_expiry(None if value == "none" else int(value))
    session["seen"] = True
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session.get_expiry_age()).encode()]


def _max_age(response) -> list[str]:
    (cookie,) = response.header_list("Set-Cookie")
    return [part.strip() for part in cookie.split(";") if part.strip().startswith("Max-Age")]


@pytest.fixture
def client(manager, memory_db):
    return make_client(_expiry_app, memory_db, manager=manager, cookie=CookiePolicy(max_age=3600))


def test_until_the_browser_closes_sends_no_max_age(client):
    assert _max_age(client.post("/?0")) == []


def test_remember_me_sends_the_sessions_own_max_age(client):
    response = client.post("/?1209600")
    assert _max_age(response) == ["Max-Age=1209600"]
    assert response.text == "1209600"


def test_a_session_without_its_own_expiry_gets_the_policys_max_age(client):
    assert _max_age(client.post("/")) == ["Max-Age=3600"]


def test_changing_the_expiry_of_a_stored_session_sends_the_cookie_again(client):
    client.post("/")
    first = client.session_id
    assert client.post("/").header_list("Set-Cookie") == []
    response = client.post("/?0")
    assert client.session_id == first
    assert _max_age(response) == []
    assert _max_age(client.post("/?none")) == ["Max-Age=3600"]


def test_pyramids_names_changed_and_new(manager, memory_db, connect, stored_id):
    conn = connect(memory_db)
    view = RequestSession(manager, conn, stored_id)
    assert view.new is False
    view["a"] = [1]
    _commit(conn)
    view = RequestSession(manager, conn, stored_id)
    view["a"].append(2)
    view.changed()
    assert view.written_session() is not None
    assert RequestSession(manager, connect(memory_db), None).new is True
