"""Flask's OWN session and flash tests, run with ``ZODBSession(app)`` applied in their ``app`` fixture.

The tests come from Flask's source distribution (which ships ``tests/``), of
the Flask version installed, looked for in ``$ZODBSESSION_FLASK_SDIST`` (the
``.tar.gz`` or its unpacked directory), else in ``var/flask-sdist/``. Nothing
is downloaded at test time: without it this test skips, saying how to fetch
it once::

    .venv/bin/pip download "flask==$(.venv/bin/flask --version | sed -n 's/^Flask //p')" \\
        --no-binary :all: --no-deps -d var/flask-sdist

The suite is copied to a temporary directory, its ``conftest.py`` gets an
``app`` fixture that installs the extension (an in-memory database), and
pytest runs the session and flash tests in a process of their own. Every
one must pass but the two about the secret key, which zodbsession does not
use: nothing is signed (``test_session_secret_key_fallbacks``), and the
session works without one (``test_missing_session``). The same behaviours are
checked in ``test_flask_parity.py``, which needs no download.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The tests that are about the secret key, which zodbsession's sessions do not need.
BY_DESIGN = {"test_session_secret_key_fallbacks", "test_missing_session"}

#: The files and the selection of Flask's session and flash tests.
FILES = ["test_basic.py", "test_testing.py", "test_session_interface.py", "test_reqctx.py",
         "test_signals.py", "test_helpers.py", "test_config.py"]
SELECT = "session or flash"

FIXTURE = '''

import zodbsession.flask as _zodbsession_flask


@pytest.fixture
def app():  # zodbsession: the extension applied in the app fixture
    app = Flask("flask_test", root_path=os.path.dirname(__file__))
    app.config.update(TESTING=True, SECRET_KEY="test key", ZODBSESSION_URI="memory://",
                      ZODBSESSION_JANITOR_INTERVAL=0)
    _zodbsession_flask.ZODBSession(app)
    yield app
    app.extensions["zodbsession"].close()


@pytest.fixture(scope="session", autouse=True)
def _standard_os_environ():  # zodbsession: without monkeypatch.notset, gone from newer pytest
    mp = monkeypatch.MonkeyPatch()
    for key in ("FLASK_ENV_FILE", "FLASK_APP", "FLASK_DEBUG", "FLASK_RUN_FROM_CLI", "WERKZEUG_RUN_MAIN"):
        mp.delenv(key, False)
    yield ()
    mp.undo()
'''


def flask_tests(into: Path) -> Path | None:
    """Flask's ``tests/`` for the installed version, unpacked under *into*; None when not cached."""
    version = importlib.metadata.version("flask")
    given = os.environ.get("ZODBSESSION_FLASK_SDIST")
    candidates = [Path(given)] if given else []
    candidates.append(ROOT / "var" / "flask-sdist" / f"flask-{version}.tar.gz")
    for candidate in candidates:
        if candidate.is_dir() and (candidate / "tests" / "conftest.py").exists():
            shutil.copytree(candidate / "tests", into / "tests")
            return into / "tests"
        if candidate.is_file():
            with tarfile.open(candidate) as sdist:
                members = [m for m in sdist.getmembers() if m.name.startswith(f"flask-{version}/tests/")]
                sdist.extractall(into, members=members, filter="data")
            return into / f"flask-{version}" / "tests"
    return None


def test_flasks_own_session_and_flash_tests_pass_with_the_extension(tmp_path):
    tests = flask_tests(tmp_path)
    if tests is None:
        pytest.skip("Flask's sdist is not cached: see this module's docstring for the one pip "
                    "download command (var/flask-sdist/ or $ZODBSESSION_FLASK_SDIST)")
    with open(tests / "conftest.py", "a", encoding="utf-8") as conftest:
        conftest.write(FIXTURE)
    report = tmp_path / "report.xml"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", SELECT,
         f"--junitxml={report}", *FILES],
        cwd=tests, capture_output=True, text=True, timeout=600, check=False)
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcomes[case.get("name", "")] = "failed" if failed else "skipped" if skipped else "passed"
    failed = {name for name, outcome in outcomes.items() if outcome != "passed"}
    assert len(outcomes) >= 20, done.stdout[-3000:]
    assert failed == BY_DESIGN, done.stdout[-6000:]
