"""Fixtures for the Quixote adapter: a FileStorage database, the test site served on waitress.

Quixote allows one publisher per process, so ``serve`` closes each
application once its block ends, and forgets Quixote's publisher at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import quixote
from quixotekit import Served, Site, waitress
from ZODB import DB
from ZODB.FileStorage import FileStorage

from zodbsession.quixote import QuixoteApp, make_app


@pytest.fixture
def data_fs(tmp_path: Path) -> Path:
    return tmp_path / "Data.fs"


@pytest.fixture
def database(data_fs: Path) -> Iterator[DB]:
    """A FileStorage database in a temporary directory, closed after the test."""
    db = DB(FileStorage(str(data_fs)))
    yield db
    db.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """``serve(db, **make_app_options)``: a context manager serving a fresh ``Site`` on waitress."""
    apps: list[QuixoteApp] = []

    @contextmanager
    def serving(db: DB, site: Site | None = None, **options: Any) -> Iterator[Served]:
        site = site if site is not None else Site(db)
        app = make_app(site, db, **options)
        apps.append(app)
        try:
            with waitress(app) as url:
                yield Served(url, app, site, db)
        finally:
            app.close()

    yield serving
    for app in apps:
        app.close()
    quixote.cleanup()


@pytest.fixture
def served(serve: Callable[..., Any], database: DB) -> Iterator[Served]:
    """The test site on waitress with 8 threads, on the test's FileStorage."""
    with serve(database) as running:
        yield running


