"""The Django WSGI app inside a ``SessionPublisher``: one transaction per request.

The Django session joins the request's transaction, so it commits with the
application's own ZODB data, aborts with it on a 500, and is retried with
it when the commit conflicts; a ``Redirect`` raised in a view commits.
"""

from __future__ import annotations

import djangokit  # configures Django for this process
import pytest
import webtest
from django.core.wsgi import get_wsgi_application

from zodbsession import SessionManager, SessionPublisher
from zodbsession.django import database


@pytest.fixture
def app(db) -> webtest.TestApp:
    publisher = SessionPublisher(get_wsgi_application(), db, manager=SessionManager(), retry_backoff=0)
    return webtest.TestApp(publisher)


def test_the_session_and_the_apps_data_commit_together(app, db):
    first = app.get("/count").json
    second = app.get("/count").json
    assert (first["n"], first["hits"], second["n"], second["hits"]) == (1, 1, 2, 2)
    assert djangokit.records(db)[second["key"]][1] == {"n": 2}
    assert djangokit.app_value(db, "hits") == 2


def test_the_session_lives_in_the_publishers_database_not_the_backends_own(app, db):
    app.get("/count")
    key = app.cookies["sessionid"]
    assert key in djangokit.records(db)
    assert key not in djangokit.records(database.database()[0])


def test_a_failing_view_rolls_back_the_saved_session_and_the_apps_data(app, db):
    app.get("/count")
    key = app.cookies["sessionid"]
    app.get("/fail", status=500)
    assert djangokit.records(db)[key][1] == {"n": 1}
    assert djangokit.app_value(db, "hits") == 1
    assert app.get("/count").json["n"] == 2


def test_a_redirect_raised_in_a_view_commits_with_its_status(app, db):
    response = app.get("/redirect", status=303)
    assert response.headers["Location"] == "/count"
    key = app.cookies["sessionid"]
    assert djangokit.records(db)[key][1] == {"redirected": True}


def test_a_publish_error_answers_its_status_headers_and_message_and_commits(app, db):
    response = app.get("/refuse", status=409)
    assert (response.status, response.headers["X-Reason"], response.text) == (
        "409 Conflict", "taken", "already taken")
    app.get("/refuse", status=409)
    assert djangokit.records(db)[app.cookies["sessionid"]][1] == {"refused": 2}


def test_a_conflict_replays_the_request_and_commits_it_once(app, db):
    """The first attempt's commit conflicts with a change to the same session record."""
    app.get("/count")
    key = app.cookies["sessionid"]
    body = app.get("/interfere").json
    assert body["attempt"] == 2
    assert djangokit.app_value(db, "hits") == 2  # once for /count, once for /interfere
    assert djangokit.records(db)[key][1] == {"n": 100, "interfered": True}  # on top of the other's 99


def test_login_and_logout_under_the_publisher(app, db):
    user = djangokit.new_user()
    app.get("/count")
    anonymous = app.cookies["sessionid"]
    key = app.post("/login", {"username": user.username, "password": djangokit.PASSWORD}).json["key"]
    assert key != anonymous and anonymous not in djangokit.records(db)
    assert djangokit.records(db)[key][2] == str(user.pk)
    assert app.get("/whoami").json == {"user": user.username}
    app.get("/logout")
    assert key not in djangokit.records(db)
    assert app.get("/whoami").json == {"user": None}


def test_messages_survive_the_redirect_under_the_publisher(app):
    app.get("/message", {"text": "done"}, status=302)
    assert app.get("/messages").json == {"messages": ["done"]}


def test_the_publisher_sends_no_cookie_of_its_own(app):
    response = app.get("/count")
    cookies = [value.split("=", 1)[0].strip() for name, value in response.headerlist if name == "Set-Cookie"]
    assert cookies == ["sessionid"]


def test_an_async_view_uses_the_requests_transaction(app, db):
    """Django runs it in an event loop; the session's async verbs still join the request."""
    assert app.get("/acount").json == {"n": 1}
    assert app.get("/acount", {"save": "1"}).json == {"n": 2}
    key = app.cookies["sessionid"]
    assert djangokit.records(db)[key][1] == {"n": 2}
    assert key not in djangokit.records(database.database()[0])
