"""The two sides of an application's code, for tests and scripts: as a request, and as a script.

*As a request* the front door owns the transaction: ``as_request`` opens
one the way ``SessionPublisher`` does (through the same request-transaction
core), makes ``current_session`` and ``current_connection`` work inside the
block, and at its end commits, or aborts if the block raised, running the
hooks, the session's ``settle`` and its checks as a request would.

*As a script* nothing owns the transaction but the code: ``ScriptSession``
(made by ``as_script``) is a long-lived handle that borrows a connection
from the pool for each ``with handle.unit_of_work():`` and gives it back at
the commit or abort that ends it. Outside one it has no connection, and
says so (``NoUnitOfWork``) instead of failing later with ZODB's obscure
"connection is closed".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import transaction
from ZODB import DB
from ZODB.Connection import Connection

from zodbsession.core.errors import NoUnitOfWork, PublishError, ZodbSessionError
from zodbsession.core.manager import SessionManager
from zodbsession.core.registry import Scope, SessionRegistry
from zodbsession.core.registry import registry as default_registry
from zodbsession.core.request_session import RequestSession
from zodbsession.core.session import Session, is_well_formed_id
from zodbsession.core.transact import Ending, TransactionCore

#: Where ``ManualClock`` starts: a fixed moment, so that tests are repeatable.
EPOCH = 1_700_000_000.0


class ManualClock:
    """A clock that moves only when the test says; give it to ``SessionManager(clock=...)``.

    Threading: a plain attribute; move it between requests, not during one.
    """

    def __init__(self, now: float = EPOCH) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        """Move the clock *seconds* forward; returns the new time."""
        self.now += seconds
        return self.now

    def set(self, now: float) -> float:
        """Put the clock at *now* (seconds since the epoch)."""
        self.now = now
        return now


class RequestContext:
    """What ``as_request`` hands its block: the request's session, connection and scope.

    After the block, ``ending`` says how it ended (``ending.committed``), and
    ``session_id`` is the id the client's cookie would then hold (None if
    the session was never stored or was ended).
    """

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.ending: Ending | None = None
        self.session_id: str | None = None

    @property
    def session(self) -> RequestSession:
        """The request's session, as ``environ["zodbsession.session"]`` holds it."""
        return self.scope.session

    @property
    def connection(self) -> Connection:
        """The request's ZODB connection (``current_connection``)."""
        return self.scope.connection

    @property
    def root(self) -> Any:
        """The database root, through the request's connection."""
        return self.scope.connection.root()

    @property
    def data(self) -> dict[str, Any]:
        """The scratch mapping of this request's one attempt (``Scope.data``)."""
        return self.scope.data


@contextlib.contextmanager
def as_request(db: DB, manager: SessionManager | None = None, *, session_id: str | None = None,
               status: str = "200 OK", registry: SessionRegistry = default_registry,
               ) -> Iterator[RequestContext]:
    """Run the block as one request would run: one transaction, committed or aborted at its end.

    *session_id* is the id the request's cookie names (None: no cookie, the
    session starts new). The block commits when it ends normally, or with
    a ``PublishError`` (re-raised afterwards, as the publisher would answer
    it); any other exception aborts and is re-raised. *status* is the answer
    the commit veto judges (a ``"5xx"`` aborts). A commit that fails raises
    its error. There is no retry: a test meets its conflicts.
    """
    core = TransactionCore(db, manager=manager if manager is not None else SessionManager(),
                           registry=registry)
    attempt = core.attempt(session_id if is_well_formed_id(session_id) else None, where="as_request")
    core.open(attempt)
    context = RequestContext(attempt.opened_scope)
    core.enter(attempt)
    try:
        try:
            yield context
        except PublishError as exc:
            context.ending = core.finish(attempt, exc.status, exc.headers, raised=exc)
            raise
        except BaseException as exc:
            context.ending = core.fail(attempt, exc)
            raise
        context.ending = core.finish(attempt, status, [])
        if context.ending.error is not None and not context.ending.committed:
            raise context.ending.error
    finally:
        core.leave()
        core.close(attempt)
        context.session_id = _cookie_after(context.ending, session_id)


def _cookie_after(ending: Ending | None, sent: str | None) -> str | None:
    """The id the client holds after the request: a new one, none (deleted), or the one it sent."""
    if ending is None or not ending.committed:
        return sent
    cookie = ending.session_use.cookie
    if isinstance(cookie, str):
        return cookie
    if cookie is False:
        return None
    return sent


class ScriptSession:
    """A long-lived handle for scripts and tests: a connection only inside a unit of work.

    ``with handle.unit_of_work() as connection:`` borrows a connection from
    the database's pool with a transaction manager of its own, and at the
    end of the block commits (or aborts, if it raised) and gives the
    connection back. Persistent objects belong to the unit of work that
    loaded them: look them up again in the next one.

    Threading: one handle per thread; units of work do not nest.
    """

    def __init__(self, db: DB, manager: SessionManager | None = None) -> None:
        self.db = db
        self.manager = manager if manager is not None else SessionManager()
        self._connection: Connection | None = None

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[Connection]:
        """Borrow a connection for the block; commit at its end, abort if it raised."""
        if self._connection is not None:
            raise ZodbSessionError("units of work do not nest: finish the one in progress first, "
                                   "or make a second handle with as_script(db)")
        tm = transaction.TransactionManager(explicit=True)
        tm.begin()
        connection = self.db.open(tm)
        self._connection = connection
        try:
            yield connection
            tm.commit()
        except BaseException:
            tm.abort()
            raise
        finally:
            self._connection = None
            connection.close()

    @property
    def in_unit_of_work(self) -> bool:
        """Whether a unit of work is open (and so a connection borrowed)."""
        return self._connection is not None

    @property
    def connection(self) -> Connection:
        """The connection of the unit of work in progress; ``NoUnitOfWork`` outside one."""
        if self._connection is None:
            raise NoUnitOfWork(
                "this ScriptSession holds a connection only inside a unit of work: wrap the code "
                "in `with handle.unit_of_work():` (it commits at the end of the block, or aborts "
                "if the block raises)")
        return self._connection

    @property
    def root(self) -> Any:
        """The database root, through the unit of work's connection."""
        return self.connection.root()

    def session(self, session_id: str) -> Session | None:
        """The live session with this id, or None (``SessionManager.get``)."""
        return self.manager.get(self.connection, session_id)

    def new_session(self, **data: Any) -> Session:
        """A new session holding *data*, stored when the unit of work commits (if *data* is given)."""
        session = self.manager.new(self.connection)
        session.update(data)
        return session

    def expire(self) -> int:
        """Sweep the expired sessions now, as the janitor does; returns how many were removed.

        The sweep commits batches of its own on a connection it borrows, so
        it runs between units of work, never inside one.
        """
        if self._connection is not None:
            raise ZodbSessionError("expire() commits its own transactions: call it between units of "
                                   "work, not inside `with handle.unit_of_work():`")
        connection = self.db.open(transaction.TransactionManager())
        try:
            return self.manager.expire(connection)
        finally:
            connection.close()


def as_script(db: DB, manager: SessionManager | None = None) -> ScriptSession:
    """A ``ScriptSession`` on *db*: the code's own transactions, one per unit of work."""
    return ScriptSession(db, manager)
