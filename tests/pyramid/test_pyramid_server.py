"""The Pyramid example shop, served by pserve and waitress in a real process on loopback.

The example directory is copied to a temporary one and started exactly as its
ini file's first lines say; a real HTTP client with a cookie jar logs in,
fills a cart, sees a failing request roll back the session, the ZODB stock
and the SQL order together, and logs out. Then the server is restarted on
the same files, and what was committed is still there.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyramidkit import Shop
from serverproc import Client

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pyramid"


@pytest.fixture
def shop_dir(tmp_path) -> Path:
    directory = tmp_path / "shop"
    shutil.copytree(EXAMPLE, directory, ignore=shutil.ignore_patterns("__pycache__", "Data.fs*", "*.sqlite"))
    return directory


@pytest.fixture
def shop(shop_dir) -> Iterator[Shop]:
    server = Shop(shop_dir).start()
    try:
        yield server
    finally:
        server.stop()


def home(client: Client) -> dict[str, Any]:
    status, page = client.json("GET", "/")
    assert status == 200, page
    return page


def post(client: Client, path: str, **fields: str) -> tuple[int, Any]:
    """POST a form, the way a browser does (urllib follows the 303 to the home page)."""
    body = urllib.parse.urlencode(fields).encode()
    status, _headers, data = client.request(
        "POST", path, body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data.decode(errors="replace")


def test_login_cart_failure_and_logout_against_a_real_server(shop):
    client = shop.client()
    page = home(client)
    assert page["user"] is None and page["stock"] == {"apple": 10, "pear": 10}
    anonymous = client.cookie("shop")
    assert anonymous

    status, page = post(client, "/login", user="alice", csrf_token=page["csrf_token"])
    assert status == 200
    assert page["user"] == "alice" and page["flash"] == ["welcome, alice"]
    assert client.cookie("shop") != anonymous  # login rotated the session id
    token = page["csrf_token"]

    status, page = post(client, "/cart/add", item="apple", csrf_token=token)
    assert (status, page["cart"], page["stock"]["apple"], page["orders"]) == (200, ["apple"], 9, 1)

    status, error = post(client, "/cart/fail", item="pear", csrf_token=token)
    assert (status, error) == (500, {"error": "RuntimeError"})
    page = home(client)
    assert (page["cart"], page["stock"], page["orders"]) == (["apple"], {"apple": 9, "pear": 10}, 1)

    status, _ = post(client, "/cart/add", item="pear", csrf_token="forged")
    assert status == 400
    assert home(client)["cart"] == ["apple"]

    logged_in = client.cookie("shop")
    status, page = post(client, "/logout", csrf_token=token)
    assert status == 200 and page["user"] is None and page["cart"] == []
    assert client.cookie("shop") != logged_in

    stale = Client(client.base_url)  # a client that kept the logged-in cookie finds nothing
    stale.opener.addheaders = [("Cookie", f"shop={logged_in}")]
    assert home(stale)["user"] is None


def test_what_was_committed_survives_a_restart(shop_dir):
    server = Shop(shop_dir).start()
    try:
        client = server.client()
        token = home(client)["csrf_token"]
        post(client, "/login", user="bob", csrf_token=token)
        token = home(client)["csrf_token"]
        post(client, "/cart/add", item="pear", csrf_token=token)
    finally:
        server.stop()
    server = Shop(shop_dir).start()
    try:
        again = server.client()
        again.jar = client.jar
        again.opener = client.sharing_cookies(again.base_url).opener
        page = home(again)
        assert (page["user"], page["cart"], page["stock"]["pear"], page["orders"]) == ("bob", ["pear"], 9, 1)
    finally:
        server.stop()


def test_parallel_requests_on_one_session_all_count_once(shop):
    """Eight purchases at once on one session, on waitress's threads: none lost, none doubled.

    waitress's 4 threads keep at most 3 requests waiting behind the session's
    lock, within its queue of 4, so none is refused.
    """
    import concurrent.futures

    client = shop.client()
    token = home(client)["csrf_token"]
    post(client, "/login", user="carol", csrf_token=token)
    token = home(client)["csrf_token"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: post(client, "/cart/add", item="apple", csrf_token=token)[0],
                                 range(8)))
    assert statuses == [200] * 8
    page = home(client)
    assert (page["cart"], page["stock"]["apple"], page["orders"]) == (["apple"] * 8, 2, 8)
