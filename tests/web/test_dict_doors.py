"""The session is a dict to application code at both front doors: the dict script of ``dictkit``.

The WSGI door's ``environ["zodbsession.session"]`` is looked up only when used,
so it has dict's methods but is no ``dict`` instance (``json.dumps`` refuses
it, never answers wrong); its ``as_dict()`` is one. The ASGI door's
``scope["session"]`` is an actual dict, loaded before the application runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import webtest
from asgikit import http_client, serving
from dictkit import check_script, run_step
from publisherkit import make_database
from ZODB import DB

from zodbsession.web.asgi import SessionMiddleware
from zodbsession.web.wsgi.publisher import SessionPublisher


@pytest.fixture
def database() -> Iterator[DB]:
    yield from make_database()


def wsgi_app(view: str):
    def app(environ, start_response):
        session = environ["zodbsession.session"]
        if view == "as_dict":
            session = session.as_dict()
        answer = run_step(session, environ["PATH_INFO"].strip("/"))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(answer).encode()]

    return app


@pytest.mark.parametrize("view", ["environ", "as_dict"])
def test_wsgi_session_behaves_as_a_dict(database, view):
    client = webtest.TestApp(SessionPublisher(wsgi_app(view), database, retry_backoff=0))
    check_script(lambda step: client.get(f"/{step}").json, json_dumps_works=view == "as_dict")


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await send({"type": "lifespan.shutdown.complete"})
        return
    session = scope["session"]
    assert session.request_session is scope["zodbsession.session"]
    answer = run_step(session, scope["path"].strip("/"))
    body = json.dumps(answer).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_asgi_scope_session_is_a_dict(database):
    with serving(SessionMiddleware(asgi_app, database, retry_backoff=0)) as server, \
            http_client(server) as client:
        check_script(lambda step: client.get(f"/{step}").json(), json_dumps_works=True)
