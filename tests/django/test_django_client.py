"""Django's own machinery over the backend: the test client, contrib.auth, contrib.messages.

No publisher here: every session operation commits a short transaction of
its own, as under ``runserver`` or a plain WSGI server.
"""

from __future__ import annotations

import djangokit  # configures Django for this process
import pytest
from django.conf import settings
from django.test import Client

from zodbsession.django import SessionStore, database


@pytest.fixture
def client() -> Client:
    return Client()


def test_a_view_writing_the_session_sets_the_cookie_and_stores_a_record(client):
    response = client.get("/count")
    key = response.cookies[settings.SESSION_COOKIE_NAME].value
    assert response.json()["n"] == 1 and response["Vary"] == "Cookie"
    assert djangokit.records()[key][:2] == ("DjangoSession", {"n": 1})
    assert client.get("/count").json() == {"n": 2, "hits": None, "key": key, "attempt": None}


def test_an_async_view_reads_and_writes_the_session(client):
    assert client.get("/acount").json() == {"n": 1}
    assert client.get("/acount", {"save": "1"}).json() == {"n": 2}
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert djangokit.records()[key][1] == {"n": 2}


def test_client_session_is_read_and_written_by_the_test_client(client):
    session = client.session
    session["n"] = 41
    session.save()
    assert client.get("/count").json()["n"] == 42
    assert client.session["n"] == 42


def test_force_login_logs_the_user_in(client):
    user = djangokit.new_user()
    client.force_login(user)
    assert client.get("/whoami").json() == {"user": user.username}
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert djangokit.records()[key][2] == str(user.pk)


def test_client_login_and_logout(client):
    user = djangokit.new_user()
    assert client.login(username=user.username, password=djangokit.PASSWORD) is True
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert client.get("/whoami").json() == {"user": user.username}
    client.logout()
    assert key not in djangokit.records()
    assert client.get("/whoami").json() == {"user": None}


def test_auth_login_cycles_the_key_and_keeps_the_data(client):
    """Session fixation: the key from before the login is dead after it."""
    client.get("/count")
    before = client.cookies[settings.SESSION_COOKIE_NAME].value
    user = djangokit.new_user()
    response = client.post("/login", {"username": user.username, "password": djangokit.PASSWORD})
    after = response.json()["key"]
    assert after != before
    assert before not in djangokit.records()
    assert djangokit.records()[after][1]["n"] == 1
    assert client.get("/whoami").json() == {"user": user.username}


def test_auth_logout_flushes_the_session(client):
    user = djangokit.new_user()
    client.post("/login", {"username": user.username, "password": djangokit.PASSWORD})
    key = client.cookies[settings.SESSION_COOKIE_NAME].value
    response = client.get("/logout")
    assert key not in djangokit.records()
    assert response.cookies[settings.SESSION_COOKIE_NAME].value == ""


def test_messages_are_kept_in_the_session_until_read(client):
    response = client.get("/message", {"text": "saved!"})
    assert response.status_code == 302
    assert client.get("/messages").json() == {"messages": ["saved!"]}
    assert client.get("/messages").json() == {"messages": []}


def test_raising_redirect_in_a_view_answers_303_and_saves_the_session(client):
    response = client.get("/redirect")
    assert (response.status_code, response["Location"]) == (303, "/count")
    key = response.cookies[settings.SESSION_COOKIE_NAME].value
    assert djangokit.records()[key][1] == {"redirected": True}


def test_a_bogus_cookie_gets_a_new_session_and_stores_nothing_for_it(client):
    client.cookies[settings.SESSION_COOKIE_NAME] = "bogus-cookie-value"
    before = set(djangokit.records())
    client.get("/whoami")
    assert set(djangokit.records()) == before
    response = client.get("/count")
    assert response.cookies[settings.SESSION_COOKIE_NAME].value != "bogus-cookie-value"


def test_an_expired_session_cookie_starts_afresh(client):
    session = SessionStore()
    session["n"] = 10
    session.set_expiry(-5)
    session.save()
    client.cookies[settings.SESSION_COOKIE_NAME] = session.session_key
    assert client.get("/count").json()["n"] == 1


def test_the_backend_opened_its_database_from_zodbsession_uri():
    db, _manager = database.database()
    assert type(db.storage).__name__ == "MappingStorage"
