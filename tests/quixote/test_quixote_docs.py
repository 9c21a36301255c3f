"""docs/quixote.md runs as written: its hello.py under ``zodbsession serve`` and ``waitress-serve``."""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from quixotekit import WaitressServe
from serverproc import Client, ServerProcess

DOC = Path(__file__).resolve().parents[2] / "docs" / "quixote.md"


def code_block_after(text: str, marker: str, language: str = "python") -> str:
    """The first fenced block of *language* after *marker* in the page."""
    words = r"\s+".join(re.escape(word) for word in marker.split())  # the page wraps lines
    match = re.search(words + rf".*?```{language}\n(.*?)```", text, re.S)
    if match is None:
        raise AssertionError(f"docs/quixote.md has no {language} block after {marker!r}")
    return match.group(1)


def test_the_pages_commands_are_the_ones_tested_here():
    text = DOC.read_text()
    assert code_block_after(text, "Serve it with zodbsession's server", "sh") == \
        "zodbsession serve --app hello:app\n"
    assert code_block_after(text, "or with any WSGI server", "sh") == \
        "waitress-serve --threads 8 --listen 127.0.0.1:8080 hello:app\n"
    install = code_block_after(text, "# zodbsession with Quixote", "sh")
    # What works: zodbsession is on no index (tests/project/test_wheel.py installs from a wheel).
    assert "pip install -e '.[quixote]'\n" in install
    assert "pip install --find-links dist 'zodbsession[quixote]'\n" in install


@pytest.fixture(params=["zodbsession-serve", "waitress-serve"])
def hello(request, tmp_path) -> Iterator[str]:
    """The page's hello.py, saved as a reader would, served by one of the page's two commands."""
    (tmp_path / "hello.py").write_text(code_block_after(DOC.read_text(), "Save this as `hello.py`"))
    # PYTHONPATH: `serve --app` imports from its current directory, waitress-serve does not.
    env = {"PYTHONPATH": str(tmp_path), "ZODBSESSION_STORAGE_URI": "file://var/Data.fs"}
    if request.param == "zodbsession-serve":
        with ServerProcess(tmp_path, env, "--app", "hello:app") as server:
            yield server.url
    else:
        with WaitressServe("hello:app", tmp_path, {**os.environ, **env}) as server:
            yield server.url


def post(client: Client, path: str, **form: str) -> tuple[int, str]:
    status, _h, body = client.request("POST", path, urllib.parse.urlencode(form).encode(),
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    return status, body.decode()


def test_the_pages_app_does_what_the_page_says(hello):
    client = Client(hello)
    assert post(client, "/login", user="alice") == (200, "hello alice: 0 notes, 1 visits")
    assert post(client, "/note", text="boom")[0] == 500
    assert post(client, "/note", text="milk") == (200, "hello alice: 1 notes, 2 visits")
    assert post(client, "/secret")[0] == 403
    assert post(client, "/logout") == (200, "hello stranger: 1 notes, 0 visits")
