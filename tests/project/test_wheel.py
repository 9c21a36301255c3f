"""The package as a user gets it: a built wheel, installed into a fresh virtual environment.

Everything else in the suite runs against the editable checkout; this test
builds the wheel, installs it into a new environment and runs the installed
``zodbsession`` from a directory with no checkout in sight, so a file the
wheel forgets (a template, a config, the demo's page) fails here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import zipfile
from importlib.metadata import version
from pathlib import Path

from serverproc import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_built_wheel_installs_into_a_fresh_venv_and_serves(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT, cwd=tmp_path)
    (wheel,) = wheels.glob("zodbsession-*.whl")
    assert wheel.name.startswith(f"zodbsession-{version('zodbsession')}-")
    with zipfile.ZipFile(wheel) as archive:  # PEP 561: the marker that says the package is typed
        assert "zodbsession/py.typed" in archive.namelist()

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    _run(venv / "bin" / "pip", "install", "-q", wheel, cwd=tmp_path)
    where = _run(venv / "bin" / "python", "-c", "import zodbsession; print(zodbsession.__file__)",
                 cwd=tmp_path)
    assert where.startswith(str(venv)), "the installed package, not the checkout, must be imported"
    assert _run(venv / "bin" / "zodbsession", "--version", cwd=tmp_path).split()[-1] \
        == version("zodbsession")

    site = tmp_path / "site"
    site.mkdir()
    server = ServerProcess(site, {}, executable=venv / "bin" / "zodbsession")
    with server, urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=30) as answer:
        assert answer.status == 200
        assert b"zodbsession" in answer.read()
    assert (site / "var" / "Data.fs").exists()
