"""The FastAPI example shop (examples/asgi/shop.py) on a real uvicorn, driven by an httpx client.

The cart is in the session, the orders are the shop's own ZODB data: a
checkout that fails after writing both rolls both back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from asgikit import http_client, serving
from ZODB import DB
from ZODB.FileStorage import FileStorage

from zodbsession.web.asgi import SessionMiddleware

SHOP = Path(__file__).resolve().parents[2] / "examples" / "asgi" / "shop.py"


@pytest.fixture
def shop():
    spec = importlib.util.spec_from_file_location("asgi_example_shop", SHOP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def server(shop, tmp_path):
    db = DB(FileStorage(str(tmp_path / "Data.fs")))
    try:
        with serving(SessionMiddleware(shop.api, db)) as running:
            yield running
    finally:
        db.close()


def test_login_fill_the_cart_and_check_out(server):
    with http_client(server) as c:
        assert c.post("/login", json={"user": "ada"}).json() == {"user": "ada"}
        c.post("/cart", json={"item": "apple"})
        assert c.post("/cart", json={"item": "pear"}).json() == {"cart": ["apple", "pear"]}
        assert c.post("/checkout").json() == {"order": 1}
        assert c.get("/cart").json() == {"user": "ada", "cart": [], "orders": 1}
        c.post("/logout")
        assert c.get("/cart").json() == {"user": None, "cart": [], "orders": 1}


def test_a_failed_checkout_keeps_the_cart_and_records_no_order(server):
    with http_client(server) as c:
        c.post("/cart", json={"item": "unobtainium"})
        assert c.post("/checkout").status_code == 500
        assert c.get("/cart").json() == {"user": None, "cart": ["unobtainium"], "orders": 0}


def test_a_4xx_commits_what_came_before_it(server):
    with http_client(server) as c:
        assert c.post("/checkout").status_code == 409
        assert c.post("/login", json={"user": " "}).status_code == 400
        assert c.get("/cart").json()["user"] is None


def test_the_factory_serves_the_storage_the_environment_names(shop, tmp_path, monkeypatch):
    monkeypatch.setenv("ZODBSESSION_STORAGE_URI", f"file://{tmp_path}/Factory.fs")
    app = shop.make_app()
    try:
        with serving(app) as running, http_client(running) as c:
            assert c.post("/cart", json={"item": "fig"}).json() == {"cart": ["fig"]}
    finally:
        app.db.close()
    assert (tmp_path / "Factory.fs").exists()
