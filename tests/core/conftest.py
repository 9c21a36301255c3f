"""The core's fixtures: connections with transaction managers of their own, and ``database``.

The databases themselves (``memory_db`` on MappingStorage, ``db`` on
FileStorage) and the clock are tests/conftest.py's: other folders use them too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import transaction
from transaction.interfaces import NoTransaction
from ZODB import DB
from ZODB.Connection import Connection


@pytest.fixture
def database(memory_db: DB) -> DB:
    """A ZODB database on a MappingStorage (``memory_db``), by the request-transaction tests' name."""
    return memory_db


def open_connection(database: DB, *, explicit: bool = False) -> Connection:
    """Open a connection of *database* with a transaction manager of its own."""
    return database.open(transaction.TransactionManager(explicit=explicit))


@pytest.fixture
def connect() -> Iterator[Callable[..., Connection]]:
    """A factory of connections, each with its own transaction manager.

    Every connection it opened is aborted and closed at teardown, so a test
    that fails half-way does not leave a database that refuses to close.
    """
    opened: list[Connection] = []

    def _connect(database: DB, *, explicit: bool = False) -> Connection:
        conn = open_connection(database, explicit=explicit)
        opened.append(conn)
        return conn

    yield _connect
    for conn in opened:
        if conn.opened:
            # An explicit manager with no transaction begun has nothing to abort.
            with contextlib.suppress(NoTransaction):
                conn.transaction_manager.abort()
            conn.close()


@pytest.fixture
def conn(db: DB, connect) -> Connection:
    """One connection to the FileStorage ``db``."""
    return connect(db)


@pytest.fixture
def memory_conn(memory_db: DB, connect) -> Connection:
    """One connection to the MappingStorage ``memory_db``."""
    return connect(memory_db)
