"""The package as a user gets it: a built wheel, installed into a fresh virtual environment.

Everything else in the suite runs against the editable checkout; these tests
build the wheel, install it into a new environment as the docs say
(``pip install --find-links dist 'zodbsession[flask]'``: the extra comes
from the wheel's metadata, the dependencies from the package index) and run
the installed ``zodbsession`` from a directory with no checkout in sight, so
a file the wheel forgets (a template, a config, the demo's page) or an extra
it does not carry fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from serverproc import Client, ServerProcess
from wsgiproc import WSGIProcess

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with ``zodbsession[flask]`` installed from the wheel built from this checkout."""
    tmp_path = tmp_path_factory.mktemp("wheel")
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, ROOT, cwd=tmp_path)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    # As docs/flask.md says, word for word.
    _run(venv / "bin" / "pip", "install", "-q", "--find-links", "dist", "zodbsession[flask]",
         cwd=tmp_path)
    return tmp_path


def test_the_wheel_carries_the_typing_marker_and_the_extras(installed: Path) -> None:
    (wheel,) = (installed / "dist").glob("zodbsession-*.whl")
    assert wheel.name.startswith(f"zodbsession-{version('zodbsession')}-")
    with zipfile.ZipFile(wheel) as archive:
        assert "zodbsession/py.typed" in archive.namelist()  # PEP 561: the package is typed
        (metadata,) = [name for name in archive.namelist() if name.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    for extra in ("asgi", "flask", "pyramid", "django", "quixote", "relstorage"):
        assert f"Provides-Extra: {extra}" in text


def test_built_wheel_installs_into_a_fresh_venv_and_serves(installed: Path) -> None:
    venv = installed / "venv"
    where = _run(venv / "bin" / "python", "-c", "import zodbsession; print(zodbsession.__file__)",
                 cwd=installed)
    assert where.startswith(str(venv)), "the installed package, not the checkout, must be imported"
    assert _run(venv / "bin" / "zodbsession", "--version", cwd=installed).split()[-1] \
        == version("zodbsession")

    site = installed / "site"
    site.mkdir()
    server = ServerProcess(site, {}, executable=venv / "bin" / "zodbsession")
    with server, urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=30) as answer:
        assert answer.status == 200
        assert b"zodbsession" in answer.read()
    assert (site / "var" / "Data.fs").exists()


@pytest.mark.parametrize("server", ["zodbsession serve", "waitress"])
def test_the_flask_extra_runs_the_flask_example(installed: Path, server: str) -> None:
    venv = installed / "venv"
    site = installed / server.replace(" ", "-")
    site.mkdir()
    shutil.copy(ROOT / "examples" / "flask" / "app.py", site / "shop.py")
    env = {"ZODBSESSION_STORAGE_URI": f"file://{site}/Data.fs"}
    if server == "waitress":
        process: ServerProcess | WSGIProcess = WSGIProcess(site, "shop:app", env=env,
                                                           python=venv / "bin" / "python")
    else:
        process = ServerProcess(site, env, "--app", "shop:app", executable=venv / "bin" / "zodbsession")
    with process:
        browser = Client(process.url)
        form = urllib.parse.urlencode({"user": "alice"}).encode()
        status, _headers, body = browser.request("POST", "/login", form, headers={
            "Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200 and b"alice" in body, body
        status, data = browser.json("GET", "/state")
        assert status == 200 and data["user"] == "alice", data
