"""The current Quixote request's ZODB connection and root: the application's own data.

The publisher opens one connection per request, in the transaction that also
holds the session: objects changed through it commit or abort with the
session. Reached from the request's environ (not a process-wide registry),
so a publisher with a registry of its own works the same.
"""

from __future__ import annotations

from typing import Any

from quixote import get_publisher
from ZODB.Connection import Connection

from zodbsession import NoActiveRequest

__all__ = ["connection", "root"]


def connection() -> Connection:
    """The current request's ZODB connection; ``NoActiveRequest`` outside a zodbsession request."""
    publisher = get_publisher()
    request = publisher.get_request() if publisher is not None else None
    conn: Connection | None = request.environ.get("zodbsession.connection") if request is not None else None
    if conn is None:
        raise NoActiveRequest("no zodbsession connection here: it exists only while a Quixote request "
                              "runs inside zodbsession.quixote.make_app (or zodbsession serve)")
    return conn


def root() -> Any:
    """The database root of the current request's connection (``connection().root()``)."""
    return connection().root()
