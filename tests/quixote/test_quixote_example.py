"""The Quixote example guestbook on real servers, driven by a real HTTP client with a cookie jar.

Both commands of ``examples/quixote/site.py`` (and docs/quixote.md), as
written: ``zodbsession serve --app examples.quixote.site:app`` (the server's
publisher runs each request, the application joins it) and ``waitress-serve
--threads 8`` (the application's own publisher).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from quixotekit import WaitressServe
from serverproc import Client, ServerProcess

REPO = Path(__file__).resolve().parents[2]
APP = "examples.quixote.site:app"


@pytest.fixture(scope="module", params=["zodbsession-serve", "waitress-serve"])
def guestbook(request, tmp_path_factory) -> Iterator[str]:
    """The example's base URL, served one way or the other, on a fresh Data.fs."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {"ZODBSESSION_STORAGE_URI": f"file://{tmp_path}/Data.fs", "PYTHONPATH": pythonpath}
    if request.param == "zodbsession-serve":
        with ServerProcess(tmp_path, {**env, "ZODBSESSION_SERVER_THREADS": "8"}, "--app", APP) as server:
            yield server.url
    else:
        with WaitressServe(APP, tmp_path, {**os.environ, **env}) as server:
            yield server.url


def post(client: Client, path: str, **form: str) -> tuple[int, str]:
    """POST a form; the redirect is followed, as a browser does."""
    status, _headers, body = client.request("POST", path, urllib.parse.urlencode(form).encode(),
                                            headers={"Content-Type": "application/x-www-form-urlencoded"})
    return status, body.decode()


def page(client: Client, path: str = "/") -> tuple[int, str]:
    status, _headers, body = client.request("GET", path)
    return status, body.decode()


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def test_login_sign_failing_sign_and_logout(guestbook):
    client = Client(guestbook)
    status, html = page(client)
    assert status == 200 and "a stranger" in html
    assert page(client, "/members")[0] == 403

    status, html = post(client, "/login", user="alice")
    assert status == 200 and "logged in as alice" in html
    assert page(client, "/members") == (200, "<p>welcome, alice</p>")
    token = csrf_token(html)

    status, html = post(client, "/sign", csrf_token=token, text="hello")
    assert status == 200 and "<li>alice: hello</li>" in html and "you signed 1 times" in html

    status, html = post(client, "/sign_and_fail", csrf_token=token, text="never")
    assert status == 500
    status, html = page(client)
    assert "never" not in html and "you signed 1 times" in html  # the entry and the count, rolled back

    assert post(client, "/sign", csrf_token="stale", text="forged")[0] == 403

    status, html = post(client, "/logout")
    assert status == 200 and "a stranger" in html
    assert "<li>alice: hello</li>" in html  # the guestbook stays; the session is gone
    assert page(client, "/members")[0] == 403


def test_two_visitors_have_their_own_sessions(guestbook):
    alice, bob = Client(guestbook), Client(guestbook)
    post(alice, "/login", user="alice")
    post(bob, "/login", user="bob")
    assert "logged in as alice" in page(alice)[1]
    assert "logged in as bob" in page(bob)[1]
