"""docs/pyramid.md runs as written: its files, served by pserve, answer its curl commands.

The files are the page's titled code blocks; the commands are the ``$``
lines of its console block, run by bash with curl, each output compared
with the lines the page shows under it. Only the port changes (6543 to a
free one). The page's WebTest snippet runs too.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pyramidkit import Shop

DOC = Path(__file__).resolve().parents[2] / "docs" / "pyramid.md"
BLOCK = re.compile(r"^```(\w+)(?: title=\"([^\"]+)\")?\n(.*?)^```$", re.M | re.S)


def blocks() -> list[tuple[str, str | None, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(DOC.read_text())]


def files() -> dict[str, str]:
    return {title: text for _lang, title, text in blocks() if title}


def session() -> list[tuple[str, str]]:
    """The (command, expected output) pairs of the console block that has ``$`` lines."""
    (text,) = [t for lang, _title, t in blocks() if lang == "console" and "\n$ " in "\n" + t]
    pairs: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            pairs.append((line[2:], ""))
        else:
            command, output = pairs[-1]
            pairs[-1] = (command, output + line + "\n")
    return pairs


@pytest.fixture
def quickstart(tmp_path) -> Path:
    directory = tmp_path / "quickstart"
    directory.mkdir()
    for name, text in files().items():
        (directory / name).write_text(text)
    return directory


def test_the_page_has_the_quick_start_files_and_commands():
    assert set(files()) == {"hello.py", "development.ini"}
    assert len(session()) >= 5


@pytest.mark.skipif(shutil.which("curl") is None, reason="the page's commands use curl")
def test_the_quick_start_runs_as_written(quickstart):
    server = Shop(quickstart).start()
    try:
        for command, expected in session():
            command = command.replace("127.0.0.1:6543", f"127.0.0.1:{server.port}")
            result = subprocess.run(["bash", "-c", command], cwd=quickstart, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, (command, result.stderr)
            assert result.stdout.strip() == expected.strip(), command
    finally:
        server.stop()
    assert (quickstart / "Data.fs").exists()


@pytest.mark.parametrize("marker", ["TestApp", "make_client"], ids=["webtest", "make_client"])
def test_the_testing_snippets_run_as_written(quickstart, marker):
    (snippet,) = [t for lang, title, t in blocks() if lang == "python" and marker in t and not title]
    result = subprocess.run([sys.executable, "-c", snippet], cwd=quickstart, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
