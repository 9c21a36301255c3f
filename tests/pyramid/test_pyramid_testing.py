"""``zodbsession.pyramid.make_client``: the zodbsession test client on a Pyramid app.

The client's requests go to the Pyramid application itself; its server-side
helpers reach the session its cookie names in the app's database.
"""

from __future__ import annotations

from typing import Any

import pytest
from pyramid.request import Request
from pyramidkit import MODES, apps_fixture, route

from zodbsession.pyramid import make_client

apps = pytest.fixture(apps_fixture)


def show_app(config: Any) -> None:
    def show(request: Request) -> dict[str, Any]:
        return {"user": request.session.user_id, "cart": request.session.get("cart")}

    def add(request: Request) -> dict[str, Any]:
        request.session["cart"] = [*request.session.get("cart", []), request.params["item"]]
        return {}

    route(config, "/show", show)
    route(config, "/add", add)


@pytest.mark.parametrize("mode", list(MODES), ids=list(MODES))
def test_a_session_set_up_by_the_client_is_the_one_the_views_see(apps, mode):
    client = make_client(apps(show_app, mode=mode).app)
    with client.session_transaction() as session:
        session["cart"] = ["pear"]
    assert client.get("/show").json() == {"user": None, "cart": ["pear"]}
    client.get("/add?item=apple")
    assert client.session == {"cart": ["pear", "apple"]}


def test_the_clients_login_and_logout_are_what_the_views_see(apps):
    client = make_client(apps(show_app).app)
    client.login("alice")
    assert client.get("/show").json() == {"user": "alice", "cart": None}
    assert client.user_id == "alice"
    client.logout()
    assert client.session_id is None
    assert client.get("/show").json() == {"user": None, "cart": None}
