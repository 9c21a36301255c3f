"""zodbsession.flask under ``zodbsession serve``: the server's publisher runs the Flask app.

The extension joins the server's transaction instead of opening its own; a
conflict, forced with a second connection, is retried by the server with the
request replayed through Flask, and applied once.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from serverproc import Client, ServerProcess

KITS = Path(__file__).resolve().parents[1] / "kits"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    tmp_path = tmp_path_factory.mktemp("flask-serve")
    env = {"ZODBSESSION_STORAGE_URI": f"file://{tmp_path}/Data.fs", "ZODBSESSION_SERVER_THREADS": "4",
           "ZODBSESSION_STORAGE_POOL_SIZE": "4",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(KITS), os.environ.get("PYTHONPATH")]))}
    with ServerProcess(tmp_path, env, "--app", "flaskkit:served") as process:
        yield process.url


def post(client: Client, path: str, **form: str) -> tuple[int, str]:
    status, _h, body = client.request("POST", path, urllib.parse.urlencode(form).encode(),
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    return status, body.decode()


def get(client: Client, path: str) -> tuple[int, str]:
    status, _h, body = client.request("GET", path)
    return status, body.decode()


def test_a_conflict_at_commit_is_retried_by_the_server_and_applied_once(server):
    client = Client(server)
    assert post(client, "/seed") == (200, "seeded")
    assert post(client, "/bump", x="1") == (200, "101")  # the other connection's 100, then 1
    assert post(client, "/bump", x="1") == (200, "202")
    assert get(client, "/get/bumps")[1].startswith("2|")  # each request's session write once


def test_a_conflict_raised_in_a_view_is_retried_by_the_server(server):
    assert get(Client(server), "/conflict-in-view") == (200, "after the retry")


def test_session_and_app_data_commit_and_abort_together_under_the_server(server):
    client = Client(server)
    get(client, "/put/colour/blue")
    assert get(client, "/fail/colour/red")[0] == 500
    assert get(client, "/five/colour/red")[0] == 503
    assert get(client, "/get/colour") == (200, "blue|blue")
    assert get(client, "/raise-redirect/colour/green")[1] == "green|green"  # the 303 is followed


def test_the_flask_cookie_settings_win_over_the_servers(server):
    """As under any other server (tests/flask/test_flask_two_servers.py): Flask's cookie name."""
    client = Client(server)
    get(client, "/put/k/v")
    assert [cookie.name for cookie in client.jar] == ["session"]  # SESSION_COOKIE_NAME's default
