"""Django's ASGI app inside ``zodbsession.web.asgi.SessionMiddleware``: the same one-transaction promise.

Django runs sync views and middleware in a thread of its own per request
(asgiref copies the context there), so the session backend finds the
request's scope and joins its transaction exactly as under the WSGI
publisher: commit together, roll back together on a 500, a raised
``Redirect`` commits, a conflict replays the request once.
"""

from __future__ import annotations

import asyncio

import djangokit  # configures Django for this process
import httpx
from django.core.asgi import get_asgi_application
from ZODB import DB

from zodbsession.django import database
from zodbsession.web.asgi import SessionMiddleware


def visit(db: DB, *paths: str) -> list[httpx.Response]:
    """GET each path in turn with one cookie jar, through the middleware around Django's ASGI app."""
    app = SessionMiddleware(get_asgi_application(), db, retry_backoff=0)

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return [await client.get(path) for path in paths]

    return asyncio.run(run())


def test_the_session_and_the_apps_data_commit_together(db):
    responses = visit(db, "/count", "/count")
    assert [r.json()["n"] for r in responses] == [1, 2]
    key = responses[0].cookies["sessionid"]
    assert djangokit.records(db)[key][1] == {"n": 2}
    assert key not in djangokit.records(database.database()[0])
    assert djangokit.app_value(db, "hits") == 2


def test_a_failing_view_rolls_back_the_saved_session_and_the_apps_data(db):
    first, failed, after = visit(db, "/count", "/fail", "/count")
    assert failed.status_code == 500
    assert after.json()["n"] == 2 and djangokit.app_value(db, "hits") == 2


def test_a_redirect_raised_in_a_view_commits(db):
    (response,) = visit(db, "/redirect")
    assert (response.status_code, response.headers["location"]) == (303, "/count")
    assert djangokit.records(db)[response.cookies["sessionid"]][1] == {"redirected": True}


def test_an_async_view_joins_the_request(db):
    first, second = visit(db, "/acount", "/acount?save=1")
    assert second.json() == {"n": 2}
    assert djangokit.records(db)[first.cookies["sessionid"]][1] == {"n": 2}


def test_a_conflict_replays_the_request_and_commits_it_once(db):
    first, interfered = visit(db, "/count", "/interfere")
    assert interfered.json()["attempt"] == 2
    assert djangokit.app_value(db, "hits") == 2
    # Replayed on top of the other transaction's n = 99.
    assert djangokit.records(db)[first.cookies["sessionid"]][1] == {"n": 100, "interfered": True}
