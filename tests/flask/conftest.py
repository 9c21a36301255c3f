"""The Flask extension's fixtures: the test app (flaskkit's ``make_app``) on a MappingStorage.

``db`` here is a MappingStorage, not tests/conftest.py's FileStorage: these
tests go through Flask's test client and never need the file.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from flaskkit import make_app
from ZODB import DB
from ZODB.MappingStorage import MappingStorage


@pytest.fixture
def db() -> Iterator[DB]:
    """A ZODB database on a MappingStorage."""
    database = DB(MappingStorage())
    yield database
    database.close()


@pytest.fixture
def app(db: DB) -> Flask:
    """The test app of ``flaskkit`` on ``db``."""
    return make_app(db)


@pytest.fixture
def client(app: Flask):
    """Flask's test client of ``app``."""
    return app.test_client()
