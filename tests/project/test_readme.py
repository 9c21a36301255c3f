"""The README stays true: every test it names exists, every module it lists exists."""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from serverproc import ServerProcess, free_port, port_open

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_test_the_readme_names_exists():
    references = re.findall(r"`?(test_\w+\.py)::(test_\w+)", README)
    assert len(references) > 20, "the Guarantees section should name its tests"
    # A test file's name is unique under tests/ (pytest's import mode needs it), whatever its folder.
    files = {path.name: path for path in (ROOT / "tests").rglob("test_*.py")}
    missing = [f"{file}::{name}" for file, name in references
               if file not in files or f"def {name}(" not in files[file].read_text()]
    assert missing == []


def test_every_module_in_the_layers_page_exists_and_every_module_is_in_it():
    """docs/layers.md lists the modules folder by folder; the list and the package agree."""
    page = (ROOT / "docs" / "layers.md").read_text()
    package = ROOT / "src" / "zodbsession"
    listed = set()
    for folder, table in re.findall(r"^\*\*`(\w+)/`\*\*.*?\n\n(.*?)(?:\n\n|\Z)", page, flags=re.M | re.S):
        listed |= {f"{folder}/{name}.py" for name in re.findall(r"^\| `([\w/]+)` \|", table, flags=re.M)}
    assert len(listed) > 30
    assert sorted(m for m in listed if not (package / m).exists()) == []
    in_folders = {path.relative_to(package).as_posix() for folder in ("core", "web", "ops", "serve")
                  for path in (package / folder).rglob("*.py") if path.name != "__init__.py"}
    assert sorted(in_folders - listed) == []


def test_readme_opens_with_the_serve_and_test_commands():
    commands = re.findall(r"```sh\n(.+?)\n```", README, flags=re.DOTALL)[:2]
    assert commands[0].endswith("zodbsession serve")
    run = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in run, ".ci/run must run the README's test command verbatim"


def _first_python_samples() -> str:
    """The README's first two Python blocks, as one module: the app and its factory."""
    blocks = re.findall(r"```python\n(.+?)\n```", README, flags=re.DOTALL)
    return blocks[0] + "\n\n" + blocks[1] + "\n"


def _post_then_get(port: int) -> str:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(urllib.request.Request(f"http://127.0.0.1:{port}/", data=b"", method="POST"),
                     timeout=30) as answer:
        assert answer.status == 200, "the 303 is followed to the page"
    with opener.open(f"http://127.0.0.1:{port}/", timeout=30) as answer:
        return answer.read().decode()


def test_the_readme_first_sample_runs_as_written_under_serve(tmp_path: Path) -> None:
    (tmp_path / "mymodule.py").write_text(_first_python_samples())
    with ServerProcess(tmp_path, {}, "--app", "mymodule:app") as server:
        assert _post_then_get(server.port) == "count: 1"


def test_the_readme_factory_runs_as_written_under_another_wsgi_server(tmp_path: Path) -> None:
    (tmp_path / "mymodule.py").write_text(_first_python_samples())
    port = free_port()
    waitress = subprocess.Popen(
        [str(Path(sys.executable).with_name("waitress-serve")), f"--listen=127.0.0.1:{port}",
         "--call", "mymodule:make_application"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not port_open(port):
            assert waitress.poll() is None and time.monotonic() < deadline, "waitress did not start"
            time.sleep(0.05)
        assert _post_then_get(port) == "count: 1"
    finally:
        waitress.terminate()
        waitress.wait(10)


def test_the_readme_asgi_sample_is_the_one_docs_asgi_runs() -> None:
    """tests/web/test_asgi_docs.py runs the page's Starlette file; the README shows the same file."""
    (sample,) = [block for block in re.findall(r"```python\n(.+?)\n```", README, flags=re.DOTALL)
                 if block.startswith("# app.py")]
    assert sample in (ROOT / "docs" / "asgi.md").read_text()


def test_every_page_the_readme_links_to_exists() -> None:
    pages = re.findall(r"\]\((docs/[\w.-]+\.md)\)", README)
    assert len(pages) >= 6
    assert [page for page in pages if not (ROOT / page).exists()] == []
