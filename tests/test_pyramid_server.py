"""The Pyramid example shop, served by pserve and waitress in a real process on loopback.

The example directory is copied to a temporary one and started exactly as its
ini file's first lines say; a real HTTP client with a cookie jar logs in,
fills a cart, sees a failing request roll back the session, the ZODB stock
and the SQL order together, and logs out. Then the server is restarted on
the same files, and what was committed is still there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serverproc import Client, _die_with_parent, free_port, port_open

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pyramid"


class Shop:
    """``python -m pyramid.scripts.pserve development.ini`` in *directory*, on a free port.

    The ini file is the example's, its port (6543) changed to a free one.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = directory / "pserve.log"

    def start(self, timeout: float = 60) -> Shop:
        ini = self.directory / "development.ini"
        text, changed = re.subn(r"listen = 127\.0\.0\.1:\d+", f"listen = 127.0.0.1:{self.port}",
                                ini.read_text())
        assert changed == 1
        ini.write_text(text)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pyramid.scripts.pserve", "development.ini"],
                cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"pserve did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def client(self) -> Client:
        return Client(f"http://127.0.0.1:{self.port}")


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
