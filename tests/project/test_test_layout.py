"""The tests' own layout: folders that mirror the package, helpers in kits, fixtures in conftests.

A test that imports ``conftest`` gets whichever folder's conftest was loaded
last (every folder may have one), and a test that imports another test
module drags that module's fixtures and collection along: both broke the
suite's collection once. Shared helpers live in ``tests/kits/``.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_imports_conftest_or_another_test_module():
    offenders = []
    for path in TESTS.rglob("*.py"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.match(r"\s*(from|import) (conftest|test_\w+)\b", line):
                offenders.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert offenders == []


def test_test_file_names_are_unique_across_folders():
    """pytest's default import mode needs every test module's basename to be unique."""
    names = [path.name for path in TESTS.rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
