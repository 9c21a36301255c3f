"""The README stays true: every test it names exists, every module it lists exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_test_the_readme_names_exists():
    references = re.findall(r"`?(test_\w+\.py)::(test_\w+)", README)
    assert len(references) > 20, "the Guarantees section should name its tests"
    missing = [f"{file}::{name}" for file, name in references
               if f"def {name}(" not in (ROOT / "tests" / file).read_text()]
    assert missing == []


def test_every_module_in_the_layout_table_exists():
    modules = re.findall(r"^\| `([\w/]+(?:\.py|/))` \|", README, flags=re.MULTILINE)
    assert len(modules) > 10
    package = ROOT / "src" / "zodbsession"
    assert [m for m in modules if not (package / m).exists()] == []


def test_readme_opens_with_the_serve_and_test_commands():
    commands = re.findall(r"```sh\n(.+?)\n```", README, flags=re.DOTALL)[:2]
    assert commands[0].endswith("zodbsession serve")
    run = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in run, ".ci/run must run the README's test command verbatim"
