"""The Pyramid example shop (examples/pyramid/shop.py) through WebTest, a forced conflict included.

The shop's own configuration on in-memory databases: pyramid_zodbconn's ZODB
holds the sessions and the stock, SQLite the orders. A second connection
changing the stock while a purchase is in flight makes the purchase's commit
raise a real ``ConflictError``; pyramid_retry replays it, and the cart, the
stock and the orders each show the purchase once.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import webtest
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPSeeOther
from pyramid.request import Request
from pyramidkit import intrude

SHOP_PY = Path(__file__).resolve().parents[2] / "examples" / "pyramid" / "shop.py"


def load_shop() -> Any:
    # Under a name of its own: other examples may have a module called shop too.
    spec = importlib.util.spec_from_file_location("pyramid_example_shop", SHOP_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # SQLAlchemy resolves the annotations through it
    spec.loader.exec_module(module)
    return module


shop = load_shop()


@pytest.fixture
def app(tmp_path) -> Iterator[webtest.TestApp]:
    settings = {
        "zodbconn.uri": "memory://",
        "tm.manager_hook": "pyramid_tm.explicit_manager",
        "retry.attempts": "3",
        "zodbsession.cookie_name": "shop",
        "zodbsession.janitor_interval": "0",
        "shop.sql_url": f"sqlite:///{tmp_path / 'shop.sqlite'}",
    }
    attempts: list[int] = []

    def buy_while_stock_changes(request: Request) -> HTTPSeeOther:
        """The shop's purchase, with another request changing the stock on the first attempt."""
        attempts.append(request.environ["retry.attempt"])
        shop.stock(request)  # loaded before the other request commits
        if request.environ["retry.attempt"] == 0:
            def restock(connection: Any) -> None:
                connection.root()["stock"]["apple"] += 100

            intrude(request.registry.zodbsession.db, restock)
        shop._add(request, request.POST["item"])
        return HTTPSeeOther(request.route_url("home"))

    with Configurator(settings=settings) as config:
        config.include(shop.includeme)
        config.add_route("contended", "/cart/contended")
        config.add_view(buy_while_stock_changes, route_name="contended", request_method="POST")
    wsgi = config.make_wsgi_app()
    test_app = webtest.TestApp(wsgi)
    test_app.attempts = attempts  # type: ignore[attr-defined]
    try:
        yield test_app
    finally:
        wsgi.registry.zodbsession.db.close()


def token(app: webtest.TestApp) -> str:
    return app.get("/").json["csrf_token"]


def test_login_cart_failure_and_logout(app):
    page = app.post("/login", {"user": "alice", "csrf_token": token(app)}).follow().json
    assert (page["user"], page["flash"]) == ("alice", ["welcome, alice"])
    page = app.post("/cart/add", {"item": "apple", "csrf_token": page["csrf_token"]}).follow().json
    assert (page["cart"], page["stock"]["apple"], page["orders"]) == (["apple"], 9, 1)
    failed = app.post("/cart/fail", {"item": "pear", "csrf_token": page["csrf_token"]}, expect_errors=True)
    assert failed.status_int == 500 and failed.json == {"error": "RuntimeError"}
    page = app.get("/").json
    assert (page["cart"], page["stock"], page["orders"]) == (["apple"], {"apple": 9, "pear": 10}, 1)
    assert app.post("/cart/add", {"item": "pear"}, expect_errors=True).status_int == 400  # no token
    page = app.post("/logout", {"csrf_token": page["csrf_token"]}).follow().json
    assert (page["user"], page["cart"]) == (None, [])


def test_a_contended_purchase_is_retried_and_recorded_once(app):
    page = app.post("/login", {"user": "bob", "csrf_token": token(app)}).follow().json
    page = app.post("/cart/contended", {"item": "apple", "csrf_token": page["csrf_token"]}).follow().json
    assert app.attempts == [0, 1]
    assert page["cart"] == ["apple"]
    assert page["stock"]["apple"] == 10 + 100 - 1
    assert page["orders"] == 1
