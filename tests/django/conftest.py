"""The Django adapter's fixtures: ``db``, a MappingStorage database of the test's own.

Not tests/conftest.py's FileStorage ``db``: Django's clients run in
process and never need the file. ``test_django_backend.py`` builds on this
one, handing it to the backend with ``use_database``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ZODB import DB
from ZODB.MappingStorage import MappingStorage


@pytest.fixture
def db() -> Iterator[DB]:
    """A ZODB database on a MappingStorage."""
    database = DB(MappingStorage())
    yield database
    database.close()
