"""docs/testing.md stays true: its example files are written out and run by pytest.

Each example is a fenced ``python`` block right after a ``<!-- file: NAME -->``
line. They run in a separate pytest process in a fresh directory, which gets
the fixtures only the way an application's suite does: through the plugin's
``pytest11`` entry point.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "testing.md"
_FILE_BLOCK = re.compile(r"<!-- file: (?P<name>[\w.]+) -->\n```python\n(?P<code>.*?)```", re.DOTALL)


def example_files() -> dict[str, str]:
    return {m["name"]: m["code"] for m in _FILE_BLOCK.finditer(DOC.read_text())}


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=directory, env=env, capture_output=True, text=True, timeout=300)


def test_the_plugin_is_registered_as_a_pytest11_entry_point():
    (point,) = [p for p in entry_points(group="pytest11") if p.name == "zodbsession"]
    assert point.value == "zodbsession.testing"


def test_the_docs_examples_pass_as_written(tmp_path):
    files = example_files()
    assert {"myshop.py", "test_myshop.py", "test_asgi_shop.py"} <= set(files)
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = sum(code.count("\ndef test_") + code.startswith("def test_") for code in files.values())
    assert f"{tests} passed" in result.stdout, result.stdout


def test_every_fixture_of_the_plugin_is_shown_in_the_docs():
    import zodbsession.testing as kit

    fixtures = {name for name in dir(kit) if name.startswith("zodbsession_")}
    code = "\n".join(example_files().values())
    assert fixtures == {"zodbsession_db", "zodbsession_file_db", "zodbsession_clock",
                        "zodbsession_manager", "zodbsession_app", "zodbsession_client",
                        "zodbsession_script"}
    assert all(name in code for name in fixtures)


def test_a_client_without_an_app_fixture_fails_saying_what_to_define(tmp_path):
    (tmp_path / "test_noapp.py").write_text("def test_it(zodbsession_client):\n    pass\n")
    result = run_pytest(tmp_path)
    assert result.returncode == 1
    assert "define a fixture named zodbsession_app" in result.stdout
