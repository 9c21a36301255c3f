"""The test kit's ASGI client: an ASGI app wrapped by ``zodbsession.web.asgi.SessionMiddleware``.

One raw ASGI app (no framework) and one Starlette app, through the same
fixtures as the WSGI client; the helpers reach the same server-side session.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest

from zodbsession.testing import ASGIClient, make_client

if "zodbsession" not in {point.name for point in entry_points(group="pytest11")}:
    pytest.fail("the zodbsession pytest plugin is not registered in this environment: reinstall the "
                "package (pip install -e .) so that its pytest11 entry point is", pytrace=False)


async def raw_cart(scope, receive, send):
    """/add/<item> appends in place; anything else shows the cart and user."""
    session = scope["zodbsession.session"]
    if scope["path"].startswith("/add/"):
        session.setdefault("cart", []).append(scope["path"][5:])
    if scope["path"] == "/fail":
        session["cart"] = ["lost"]
        raise RuntimeError("boom")
    body = json.dumps({"cart": session.get("cart", []), "user": session.user_id}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def zodbsession_app():
    return raw_cart


def test_the_fixture_client_is_an_asgi_client(zodbsession_client):
    assert isinstance(zodbsession_client, ASGIClient)


def test_asgi_client_keeps_the_cookie_and_reads_the_session(zodbsession_client):
    assert zodbsession_client.post("/add/apple").json()["cart"] == ["apple"]
    assert zodbsession_client.post("/add/pear").json()["cart"] == ["apple", "pear"]
    assert zodbsession_client.session == {"cart": ["apple", "pear"]}


def test_asgi_failing_request_rolls_back(zodbsession_client):
    zodbsession_client.post("/add/apple")
    assert zodbsession_client.post("/fail").status == 500
    assert zodbsession_client.session == {"cart": ["apple"]}


def test_asgi_session_transaction_and_login(zodbsession_client):
    with zodbsession_client.session_transaction() as session:
        session["cart"] = ["seeded"]
    zodbsession_client.login("alice")
    assert zodbsession_client.get("/").json() == {"cart": ["seeded"], "user": "alice"}
    zodbsession_client.logout()
    assert zodbsession_client.get("/").json() == {"cart": [], "user": None}


@pytest.mark.zodbsession_manager(idle_timeout=600, max_lifetime=600, access_resolution=0)
def test_asgi_session_expires_on_the_clock(zodbsession_client, zodbsession_clock):
    zodbsession_client.post("/add/apple")
    zodbsession_clock.advance(600)
    assert zodbsession_client.get("/").json()["cart"] == []


def test_starlette_app(zodbsession_db, zodbsession_manager):
    starlette = pytest.importorskip("starlette.applications")
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def count(request):
        session = request.scope["zodbsession.session"]
        session["n"] = session.get("n", 0) + 1
        return JSONResponse({"n": session["n"]})

    app = starlette.Starlette(routes=[Route("/count", count, methods=["POST"])])
    client = make_client(app, zodbsession_db, manager=zodbsession_manager)
    try:
        assert isinstance(client, ASGIClient)
        assert [client.post("/count").json()["n"] for _ in range(3)] == [1, 2, 3]
        assert client.session == {"n": 3}
    finally:
        client.close()
