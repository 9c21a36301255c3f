"""The front doors' fixtures: ``database``, the MappingStorage both doors' tests run on.

Files whose scenario needs a FileStorage (a real server, an application
object of their own) override ``database`` in the file, on top of
tests/conftest.py's ``db``, and say so in its docstring.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from publisherkit import make_database
from ZODB import DB


@pytest.fixture
def database() -> Iterator[DB]:
    """A ZODB database on a MappingStorage, with the application's ``root()["app"]`` = 0."""
    yield from make_database()
