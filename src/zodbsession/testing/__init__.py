"""``zodbsession.testing``: the test kit, a pytest plugin installed with zodbsession.

Installing zodbsession registers the plugin (entry point ``pytest11``, name
``zodbsession``), so an application's tests get its fixtures with no import:

- ``zodbsession_db``: a database in memory (a ``MappingStorage``), or a
  temporary FileStorage for a test marked ``@pytest.mark.zodbsession_filestorage``;
  ``zodbsession_file_db`` is always the FileStorage one;
- ``zodbsession_clock``: a ``ManualClock`` the test moves (``advance(seconds)``);
- ``zodbsession_manager``: a ``SessionManager`` on that clock; options come
  from ``@pytest.mark.zodbsession_manager(idle_timeout=60, ...)``;
- ``zodbsession_client``: a client for the application the test module (or
  a conftest) provides as the fixture ``zodbsession_app``, WSGI or ASGI,
  wrapped by the publisher or the middleware with that database and manager;
- ``zodbsession_script``: a ``ScriptSession`` on that database and manager.

And for code outside fixtures: ``make_client``, ``as_request``, ``as_script``.
See docs/testing.md ("Testing your application").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ZODB import DB
from ZODB.FileStorage import FileStorage
from ZODB.MappingStorage import MappingStorage

from zodbsession.core.errors import ConfigError
from zodbsession.core.manager import SessionManager
from zodbsession.testing.clients import ASGIClient, Response, SessionClient, WSGIClient, make_client
from zodbsession.testing.scopes import (
    EPOCH,
    ManualClock,
    RequestContext,
    ScriptSession,
    as_request,
    as_script,
)

__all__ = [
    "ASGIClient",
    "EPOCH",
    "ManualClock",
    "RequestContext",
    "Response",
    "ScriptSession",
    "SessionClient",
    "WSGIClient",
    "as_request",
    "as_script",
    "make_client",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "zodbsession_filestorage: zodbsession_db is a temporary FileStorage, not in memory")
    config.addinivalue_line(
        "markers", "zodbsession_manager(**options): SessionManager options for zodbsession_manager")


def _file_db(directory: Any) -> DB:
    return DB(FileStorage(str(directory / "Data.fs")))


@pytest.fixture
def zodbsession_file_db(tmp_path: Any) -> Iterator[DB]:
    """A database on a FileStorage in the test's temporary directory, closed after the test."""
    database = _file_db(tmp_path)
    yield database
    database.close()


@pytest.fixture
def zodbsession_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[DB]:
    """A database in memory, or on a temporary FileStorage under ``zodbsession_filestorage``."""
    if request.node.get_closest_marker("zodbsession_filestorage") is not None:
        database = _file_db(tmp_path)
    else:
        database = DB(MappingStorage())
    yield database
    database.close()


@pytest.fixture
def zodbsession_clock() -> ManualClock:
    """A clock at ``EPOCH`` that moves only when the test calls ``advance`` or ``set``."""
    return ManualClock()


@pytest.fixture
def zodbsession_manager(request: pytest.FixtureRequest, zodbsession_clock: ManualClock) -> SessionManager:
    """A ``SessionManager`` on ``zodbsession_clock``, with the marker's options if any."""
    marker = request.node.get_closest_marker("zodbsession_manager")
    options = dict(marker.kwargs) if marker is not None else {}
    return SessionManager(clock=zodbsession_clock, **options)


@pytest.fixture
def zodbsession_app() -> Any:
    """The application under test: define a fixture of this name to use ``zodbsession_client``."""
    pytest.fail("zodbsession_client needs the application: define a fixture named zodbsession_app "
                "that returns it (a WSGI or ASGI app, wrapped or not), in the test module or a conftest.py",
                pytrace=False)


@pytest.fixture
def zodbsession_client(zodbsession_app: Any, zodbsession_db: DB,
                       zodbsession_manager: SessionManager) -> Iterator[SessionClient]:
    """A client (one browser) for ``zodbsession_app`` on ``zodbsession_db`` and ``zodbsession_manager``.

    An application already wrapped in a ``SessionPublisher`` or
    ``SessionMiddleware`` keeps its own database and manager, and so does a
    Pyramid app with ``zodbsession.pyramid``; a Django project fails the test
    at once, in one line naming Django's test client.
    """
    try:
        client = make_client(zodbsession_app, zodbsession_db, manager=zodbsession_manager)
    except ConfigError as exc:
        pytest.fail(f"zodbsession_client: {exc.problem}", pytrace=False)
    yield client
    close = getattr(client, "close", None)
    if close is not None:
        close()


@pytest.fixture
def zodbsession_script(zodbsession_db: DB, zodbsession_manager: SessionManager) -> ScriptSession:
    """A ``ScriptSession``: ``with zodbsession_script.unit_of_work():`` borrows a connection."""
    return as_script(zodbsession_db, zodbsession_manager)
