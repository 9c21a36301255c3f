"""``request.session`` in Starlette and FastAPI is zodbsession's session, on a real uvicorn.

The applications use ``request.session`` only, the way Starlette's own
``SessionMiddleware`` is used (and Authlib, CSRF middlewares...): read, write,
``JSONResponse(request.session)``, ``clear()``. Then the two stacking orders
with Starlette's own ``SessionMiddleware``: the middleware nearer the
application owns ``scope["session"]``, and the other one is left working on
its own key.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from asgikit import http_client, serving
from fastapi import FastAPI, Request
from publisherkit import make_database
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware as StarletteSessionMiddleware
from starlette.responses import JSONResponse
from starlette.routing import Route
from ZODB import DB

from zodbsession import SessionManager
from zodbsession.web.asgi import SessionMiddleware


@pytest.fixture
def database() -> Iterator[DB]:
    yield from make_database()


def stored_data(db: DB, session_id: str) -> dict[str, Any]:
    with db.transaction() as conn:
        return dict(SessionManager().get(conn, session_id))


async def visit(request: Request) -> JSONResponse:
    request.session["visits"] = request.session.get("visits", 0) + 1
    request.session.setdefault("first", request.url.path)
    return JSONResponse(request.session)


async def forget(request: Request) -> JSONResponse:
    request.session.clear()
    return JSONResponse(request.session)


def starlette_app(middleware: list[Middleware] | None = None) -> Starlette:
    return Starlette(routes=[Route("/visit", visit), Route("/forget", forget)],
                     middleware=middleware or [])


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/visit")
    async def visit_endpoint(request: Request) -> dict[str, Any]:
        request.session["visits"] = request.session.get("visits", 0) + 1
        request.session.setdefault("first", request.url.path)
        return request.session  # FastAPI's jsonable_encoder, then JSONResponse

    @api.get("/json")
    async def as_json_response(request: Request) -> JSONResponse:
        session = request.session
        session |= {"via": "json"}  # (request.session |= ... would assign the property)
        return JSONResponse(session)

    @api.get("/forget")
    def forget_endpoint(request: Request) -> dict[str, Any]:  # a thread-pool endpoint
        request.session.clear()
        return request.session

    return api


@pytest.mark.parametrize("make", [starlette_app, fastapi_app], ids=["starlette", "fastapi"])
def test_request_session_is_the_zodb_session(database, make):
    with serving(SessionMiddleware(make(), database, retry_backoff=0)) as server, \
            http_client(server) as client:
        assert client.get("/visit").json() == {"visits": 1, "first": "/visit"}
        assert client.get("/visit").json() == {"visits": 2, "first": "/visit"}
        session_id = client.cookies["zodbsession"]
        assert stored_data(database, session_id) == {"visits": 2, "first": "/visit"}
        if make is fastapi_app:
            assert client.get("/json").json() == {"visits": 2, "first": "/visit", "via": "json"}
        assert client.get("/forget").json() == {}
        assert stored_data(database, session_id) == {}


def test_starlette_session_middleware_inside_ours_owns_request_session(database):
    """Starlette's SessionMiddleware nearer the app: request.session is its signed cookie."""
    app = starlette_app([Middleware(StarletteSessionMiddleware, secret_key="s3cret")])
    with serving(SessionMiddleware(app, database, retry_backoff=0)) as server, \
            http_client(server) as client:
        assert client.get("/visit").json() == {"visits": 1, "first": "/visit"}
        assert client.get("/visit").json() == {"visits": 2, "first": "/visit"}
        assert "session" in client.cookies  # Starlette's own cookie carries the data
        assert "zodbsession" not in client.cookies  # ours was never written: nothing stored
        with database.transaction() as conn:
            container = SessionManager().container(conn, create=False)
            assert container is None or len(container) == 0


def test_our_middleware_inside_starlettes_owns_request_session(database):
    """Ours nearer the app: request.session is the ZODB session; Starlette's stays inert."""
    app = StarletteSessionMiddleware(SessionMiddleware(starlette_app(), database, retry_backoff=0),
                                     secret_key="s3cret")
    with serving(app) as server, http_client(server) as client:
        assert client.get("/visit").json() == {"visits": 1, "first": "/visit"}
        assert client.get("/visit").json() == {"visits": 2, "first": "/visit"}
        assert "session" not in client.cookies  # Starlette's session was never touched
        assert stored_data(database, client.cookies["zodbsession"]) == {"visits": 2, "first": "/visit"}
