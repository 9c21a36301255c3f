"""docs/flask.md runs as written: its app under ``zodbsession serve``, its tests under pytest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
from serverproc import Client, ServerProcess

from zodbsession import open_db

DOC = Path(__file__).resolve().parents[2] / "docs" / "flask.md"


def code_block_after(text: str, marker: str) -> str:
    """The first ```python block after *marker* in the page."""
    words = r"\s+".join(re.escape(word) for word in marker.split())  # the page wraps lines
    match = re.search(words + r".*?```python\n(.*?)```", text, re.S)
    if match is None:
        raise AssertionError(f"docs/flask.md has no python block after {marker!r}")
    return match.group(1)


@pytest.fixture
def project(tmp_path) -> Path:
    """A directory holding the page's app.py and test_app.py, as a reader would save them."""
    text = DOC.read_text()
    (tmp_path / "app.py").write_text(code_block_after(text, "Save this as `app.py`"))
    (tmp_path / "test_app.py").write_text(code_block_after(text, "Save this as `test_app.py`"))
    return tmp_path


def test_the_pages_tests_pass_with_flasks_test_client(project):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
                            cwd=project, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(project)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_pages_app_runs_under_zodbsession_serve(project, env):
    def post(client: Client, path: str, **form: str) -> tuple[int, str]:
        status, _h, body = client.request("POST", path, urllib.parse.urlencode(form).encode(),
                                          headers={"Content-Type": "application/x-www-form-urlencoded"})
        return status, body.decode()

    # PYTHONPATH: until `serve --app` imports from its current directory by itself.
    with ServerProcess(project, {**env, "PYTHONPATH": str(project)}, "--app", "app:app") as server:
        client = Client(server.url)
        status, page = post(client, "/login", user="alice")
        assert status == 200
        assert page == "welcome hello alice: 0 notes, 1 visits"
        assert post(client, "/note", text="boom")[0] == 500
        assert post(client, "/note", text="milk")[1] == " hello alice: 1 notes, 2 visits"
        assert post(client, "/logout")[1] == " hello stranger: 1 notes, 0 visits"


def test_the_pages_cli_command_runs_under_flask(project):
    text = DOC.read_text()
    app_py = project / "app.py"
    app_py.write_text(app_py.read_text() + "\n\n" + code_block_after(text, "Added to `app.py`, this runs as"))
    flask_cli = str(Path(sys.executable).with_name("flask"))
    for note in ("buy milk", "call mum"):
        result = subprocess.run([flask_cli, "--app", "app", "add-note", note], cwd=project,
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "PYTHONPATH": str(project)})
        assert result.returncode == 0, result.stdout + result.stderr
    db = open_db(f"file://{project}/var/Data.fs")
    try:
        with db.transaction() as conn:
            assert conn.root()["notes"] == ["buy milk", "call mum"]
    finally:
        db.close()

