"""The Flask example shop on a real server, driven by a real HTTP client with a cookie jar.

Two ways to serve it, the same behaviour: ``zodbsession serve --app`` (the
server's publisher runs each request, the extension joins it) and waitress
alone (the extension's own publisher).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from serverproc import Client, ServerProcess, _die_with_parent, free_port, port_open

REPO = Path(__file__).resolve().parents[2]
APP = "examples.flask.app:app"


class WaitressProcess:
    """``python -m waitress`` serving the example on loopback, in a child process."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.cwd = cwd
        self.env = env
        self.log_path = cwd / f"waitress-{self.port}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> WaitressProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "waitress", "--listen", f"127.0.0.1:{self.port}", "--threads", "4", APP],
            cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"waitress exited:\n{self.log_path.read_text()}")
            if port_open(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError(f"waitress did not listen:\n{self.log_path.read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@pytest.fixture(scope="module", params=["zodbsession-serve", "waitress"])
def shop(request, tmp_path_factory) -> Iterator[str]:
    """The example's base URL, served one way or the other; one server for the module's tests.

    Each test has a client (a cookie jar) of its own; the shop's orders are
    shared, so tests count them before and after.
    """
    tmp_path = tmp_path_factory.mktemp(request.param)
    env = {"ZODBSESSION_STORAGE_URI": f"file://{tmp_path}/Data.fs",
           "ZODBSESSION_SERVER_THREADS": "4", "ZODBSESSION_STORAGE_POOL_SIZE": "4"}
    # The repository on the path: `serve --app` may not import from its cwd yet.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    if request.param == "zodbsession-serve":
        with ServerProcess(tmp_path, {**env, "PYTHONPATH": pythonpath}, "--app", APP) as server:
            yield server.url
    else:
        child_env = {**os.environ, "PYTHONPATH": pythonpath,
                     "ZODBSESSION_STORAGE_URI": env["ZODBSESSION_STORAGE_URI"]}
        with WaitressProcess(tmp_path, child_env) as server:
            yield server.url


def post_page(client: Client, path: str, **form: str) -> tuple[int, str]:
    """POST a form; the redirect is followed, as a browser does: the status and the page."""
    status, _headers, body = client.request("POST", path, urllib.parse.urlencode(form).encode(),
                                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    return status, body.decode()


def post(client: Client, path: str, **form: str) -> int:
    return post_page(client, path, **form)[0]


def state(client: Client) -> dict:
    status, data = client.json("GET", "/state")
    assert status == 200, data
    return data


def session_cookies(client: Client) -> list[str]:
    return [cookie.value for cookie in client.jar]


def test_login_cart_failing_checkout_checkout_logout(shop):
    client = Client(shop)
    orders = state(client)["orders"]
    assert state(client) == {"user": None, "cart": [], "orders": orders, "flashes": []}
    assert session_cookies(client) == []  # reading an empty session stores nothing

    assert post(client, "/login", user="alice") == 200  # the redirect is followed to the page
    assert state(client)["user"] == "alice"
    assert len(session_cookies(client)) == 1

    post(client, "/cart", item="apple")
    post(client, "/cart", item="unobtainium")
    assert state(client)["cart"] == ["apple", "unobtainium"]

    # The order was written and the cart emptied, then the supplier failed:
    # the session and the app's own data roll back together.
    assert post(client, "/checkout") == 500
    assert state(client)["cart"] == ["apple", "unobtainium"]
    assert state(client)["orders"] == orders

    status, _h, _b = client.request("POST", "/checkout")  # still failing: nothing half-done
    assert status == 500
    assert state(client)["orders"] == orders


def test_checkout_commits_the_order_and_the_emptied_cart(shop):
    client = Client(shop)
    orders = state(client)["orders"]
    post(client, "/login", user="bob")
    post(client, "/cart", item="pear")
    status, page = post_page(client, "/checkout")
    assert status == 200
    assert f"Order {orders + 1} placed." in page  # flashed before the redirect, shown after it
    after = state(client)
    assert after["cart"] == [] and after["orders"] == orders + 1


def test_login_rotates_the_session_id(shop):
    client = Client(shop)
    post(client, "/cart", item="fig")
    before = session_cookies(client)
    post(client, "/login", user="carol")
    after = session_cookies(client)
    assert len(before) == len(after) == 1 and before != after
    assert state(client)["cart"] == ["fig"]  # the data came along


def test_logout_ends_the_session(shop):
    client = Client(shop)
    post(client, "/login", user="dave")
    post(client, "/cart", item="kiwi")
    post(client, "/logout")
    assert session_cookies(client) == []  # the server deleted the cookie
    after = state(client)
    assert (after["user"], after["cart"]) == (None, [])


def test_checkout_without_login_is_refused_and_changes_nothing(shop):
    client = Client(shop)
    post(client, "/cart", item="plum")
    status, _h, _b = client.request("POST", "/checkout")
    assert status == 401
    assert state(client)["cart"] == ["plum"]


def test_flash_messages_are_shown_once_on_the_page(shop):
    client = Client(shop)
    _status, page = post_page(client, "/login", user="")
    assert "Tell us your name." in page
    assert client.json("GET", "/messages")[1] == []  # the page consumed it


def load_example():
    """examples/flask/app.py as a module, without putting the repository on sys.path."""
    spec = importlib.util.spec_from_file_location("flask_example_shop", REPO / "examples/flask/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shop_under_flasks_test_client():
    shop = load_example().create_app({"ZODBSESSION_URI": "memory://", "TESTING": True})
    client = shop.test_client()
    with client.session_transaction() as session:
        session.login("erin")
        session["cart"] = ["apple", "unobtainium"]
    with pytest.raises(RuntimeError, match="unobtainium"):  # TESTING: the error reaches the client
        client.post("/checkout")
    assert client.get("/state").json["cart"] == ["apple", "unobtainium"]
    with client.session_transaction() as session:
        session["cart"] = ["apple"]
    client.post("/checkout")
    assert client.get("/state").json == {"user": "erin", "cart": [], "orders": 1,
                                         "flashes": ["Order 1 placed."]}


def test_concurrent_checkouts_lose_no_order(shop):
    """Checkouts from several browsers at once all append to one list: the conflicts are replayed.

    Whatever the interleaving, every checkout answered 200 is in the list
    exactly once, and each cart holds what was added since its last placed one.
    """
    clients = [Client(shop) for _ in range(4)]
    before = state(clients[0])["orders"]
    for number, client in enumerate(clients):
        post(client, "/login", user=f"buyer{number}")

    def shop_three_times(client: Client) -> tuple[int, int]:
        """Checkouts placed, and breads added since the last one placed (still in the cart)."""
        placed = pending = 0
        for _ in range(3):
            post(client, "/cart", item="bread")
            pending += 1
            if post(client, "/checkout") == 200:
                placed, pending = placed + 1, 0
        return placed, pending

    with ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(shop_three_times, clients))
    placed = sum(p for p, _ in results)
    assert placed >= 1
    assert state(clients[0])["orders"] == before + placed
    for client, (_placed, pending) in zip(clients, results, strict=True):
        assert state(client)["cart"] == ["bread"] * pending
