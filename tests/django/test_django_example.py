"""examples/django, the shop, as a user runs it: ``zodbsession serve`` and a real HTTP client.

The project is copied to a temporary directory, migrated and given a user
by its own ``manage.py``, then served by ``zodbsession serve`` (its
``conf/zodbsession.toml`` names the app) on loopback; a cookie-keeping HTTP client logs in,
fills a cart, checks out (once successfully, once failing, which must roll
back the session and the orders together) and logs out. Its own Django
test-client suite runs too (``manage.py test shop``), in a subprocess: each
project gets a Django configuration of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from serverproc import Client, ServerProcess, run_cli

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "django"
PASSWORD = "wonderland-rabbit-hole"


def manage(site: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=site, env={**os.environ, **env},
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A migrated copy of the example project with a user ``alice``, and its environment."""
    site = tmp_path_factory.mktemp("django-shop") / "site"
    shutil.copytree(EXAMPLE, site, ignore=shutil.ignore_patterns("var", "__pycache__"))
    env = {"PYTHONPATH": str(site), "DJANGO_SETTINGS_MODULE": "shop.settings",
           "DJANGO_SUPERUSER_USERNAME": "alice", "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
           "DJANGO_SUPERUSER_EMAIL": "alice@example.org"}
    manage(site, env, "migrate", "--verbosity=0")
    manage(site, env, "createsuperuser", "--noinput")
    return site, env


@pytest.fixture(scope="module")
def server(site):
    path, env = site
    with ServerProcess(path, env) as server:  # as docs/django.md says: conf/zodbsession.toml names the app
        yield server


class Shopper(Client):
    """A browser on the shop: it sends the CSRF token Django's forms carry."""

    def post_form(self, path: str, **fields: str) -> tuple[int, bytes]:
        if self.cookie("csrftoken") is None:
            self.request("GET", "/")
        fields["csrfmiddlewaretoken"] = self.cookie("csrftoken")
        status, _headers, body = self.request(
            "POST", path, urllib.parse.urlencode(fields).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        return status, body

    def state(self) -> dict:
        status, state = self.json("GET", "/state")
        assert status == 200, state
        return state

    def log_in(self) -> None:
        status, _body = self.post_form("/login", username="alice", password=PASSWORD)
        assert status == 200
        assert self.state()["user"] == "alice"


def test_login_cart_checkout_and_logout_over_http(server):
    shopper = Shopper(server.url)
    shopper.post_form("/cart", item="apple")  # before logging in: the cart survives the login
    anonymous_key = shopper.cookie("sessionid")
    shopper.log_in()
    assert shopper.cookie("sessionid") != anonymous_key  # cycle_key() at login
    status, page = shopper.post_form("/cart", item="pear")  # redirected to the page, which shows it
    assert status == 200 and "pear is in your cart." in page.decode()
    state = shopper.state()
    assert (state["cart"], state["messages"]) == (["apple", "pear"], [])  # the page used it up
    orders = state["orders"]
    status, page = shopper.post_form("/checkout")
    assert status == 200 and f"Order {orders + 1} placed." in page.decode()
    state = shopper.state()
    assert (state["cart"], state["orders"]) == ([], orders + 1)
    shopper.post_form("/logout")
    assert shopper.cookie("sessionid") is None
    assert shopper.state()["user"] is None


def test_a_failed_checkout_rolls_back_the_session_and_the_orders(server):
    shopper = Shopper(server.url)
    shopper.log_in()
    shopper.post_form("/cart", item="unobtainium")
    orders = shopper.state()["orders"]
    status, _body = shopper.post_form("/checkout")
    assert status == 500
    state = shopper.state()
    assert (state["cart"], state["orders"]) == (["unobtainium"], orders)
    assert state["user"] == "alice"


def test_a_wrong_password_answers_with_a_message_and_no_login(server):
    shopper = Shopper(server.url)
    status, page = shopper.post_form("/login", username="alice", password="guess")
    assert status == 200 and "Wrong name or password." in page.decode()
    assert shopper.state()["user"] is None


def test_two_shoppers_have_separate_carts(server):
    first, second = Shopper(server.url), Shopper(server.url)
    first.post_form("/cart", item="apple")
    second.post_form("/cart", item="fig")
    assert first.state()["cart"] == ["apple"] and second.state()["cart"] == ["fig"]


def test_the_django_sessions_are_zodbsession_sessions(site, tmp_path):
    """After the server stops, ``zodbsession ls``/``show`` see the shop's sessions, owner included,
    and ``manage.py clearsessions`` runs on the same database."""
    path, env = site
    env = {**env, "ZODBSESSION_STORAGE_URI": f"file://{tmp_path}/Data.fs"}  # not the running server's
    with ServerProcess(path, env, "--app", "shop.wsgi:application") as server:
        shopper = Shopper(server.url)
        shopper.log_in()
        shopper.post_form("/cart", item="kiwi")
    key = shopper.cookie("sessionid")
    listed = run_cli("ls", "--user", "1", env=env, cwd=path)
    assert listed.returncode == 0, listed.stderr
    assert key[:8] in listed.stdout, listed.stdout
    shown = run_cli("show", key, env=env, cwd=path)
    assert shown.returncode == 0 and "kiwi" in shown.stdout, shown.stdout + shown.stderr
    manage(path, env, "clearsessions")  # nothing expired: the session stays
    assert "kiwi" in run_cli("show", key, env=env, cwd=path).stdout


def test_the_examples_own_test_client_suite_passes(site):
    path, env = site
    result = manage(path, env, "test", "shop", "--verbosity=1")
    assert "OK" in result.stderr


def test_clearsessions_while_the_server_holds_the_file_is_one_line(site, server):
    """``manage.py clearsessions`` next to a running ``zodbsession serve``: no DatabaseLocked traceback."""
    path, env = site
    result = subprocess.run([sys.executable, "manage.py", "clearsessions"], cwd=path,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("CommandError: var/Data.fs is in use by another process"), line
    assert "`zodbsession expire`" in line
    expired = run_cli("expire", env=env, cwd=path)  # the way that works: through the control socket
    assert expired.returncode == 0 and "expired" in expired.stdout, expired.stderr
