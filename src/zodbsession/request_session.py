"""``RequestSession``: one request's lazy view of its session.

The publisher puts one in ``environ["zodbsession.session"]`` before the
application runs, but looks nothing up until the application first uses it:
an application that never touches the session pays for no lookup and no
write. The first read finds the session named by the cookie (or starts a
transient one); the first write stores a new one. The view also carries the
verbs that change what the client's cookie must say (``login``, ``rotate``,
``invalidate``), which is how the publisher knows when to send ``Set-Cookie``.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from transaction.interfaces import NoTransaction
from ZODB.Connection import Connection

from zodbsession.manager import SessionManager
from zodbsession.session import Session


class RequestSession(MutableMapping[str, Any]):
    """The current request's session, resolved on first use.

    *cookie_id* is the id the request's cookie names, already checked to be
    well formed (``is_well_formed_id``), or None: the publisher checks it once.

    Threading: belongs to the one request (thread or task) it was made for.
    """

    def __init__(self, manager: SessionManager, connection: Connection, cookie_id: str | None):
        self._manager = manager
        self._connection = connection
        self._cookie_id = cookie_id
        self._session: Session | None = None
        self._found = False
        self._invalidated = False

    # An entity, compared by identity (MutableMapping would compare contents).
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    # -- resolution ---------------------------------------------------------

    def _zodbsession_unwrap(self) -> Session:
        """The persistent session behind this view, looked up or started now."""
        if self._session is None:
            session = None
            if self._cookie_id is not None and not self._invalidated:
                # The publisher passes only a well-formed cookie id (or None).
                session = self._manager._get_well_formed(self._connection, self._cookie_id)
            self._found = session is not None
            self._session = session if session is not None else self._manager.new(self._connection)
        return self._session

    @property
    def resolved(self) -> bool:
        """Whether the application has used the session in this request."""
        return self._session is not None

    # -- bookkeeping, read-only ----------------------------------------------

    @property
    def id(self) -> str:
        """The session's id (a new session's id is only kept if it is written)."""
        return self._zodbsession_unwrap().id

    @property
    def user_id(self) -> str | None:
        """Who is logged in on this session, or None."""
        return self._zodbsession_unwrap().user_id

    @property
    def is_new(self) -> bool:
        """Whether the session was started in this request rather than found."""
        self._zodbsession_unwrap()
        return not self._found

    # -- the verbs that change the cookie -----------------------------------

    def rotate(self) -> None:
        """Give the session a new id, keeping its data (defeats session fixation)."""
        session = self._zodbsession_unwrap()
        self._manager.rotate(session)

    def login(self, user_id: str) -> None:
        """Bind the session to *user_id*, rotating its id as a login must."""
        session = self._zodbsession_unwrap()
        self._manager.set_user(session, user_id)
        session.changed()  # a login is a write: store a transient session
        self.rotate()

    def invalidate(self) -> None:
        """End the session on the server; later use in this request starts afresh."""
        if self._session is None and self._cookie_id is None:
            return
        session = self._zodbsession_unwrap()
        self._manager.invalidate(session)
        self._session = None
        self._invalidated = True

    logout = invalidate

    def save_changes(self) -> None:
        """Mark the session changed (after mutating a nested value in place)."""
        self._manager.save_changes(self._zodbsession_unwrap())

    def forget_changes(self) -> None:
        """Abort the request's transaction: this session's changes and all others.

        The request goes on in a fresh transaction, and the view starts over:
        the next use looks the cookie's session up again.
        """
        self._manager.forget_changes(self._zodbsession_unwrap())
        # The publisher's explicit manager has no transaction after the abort:
        # begin the next one, or the request's later writes and its commit
        # raise NoTransaction (a 500 for having called this).
        tm = self._connection.transaction_manager
        if getattr(tm, "explicit", False):
            try:
                tm.get()
            except NoTransaction:
                tm.begin()
        # The abort also undid any login, rotation or logout of this request.
        self._session = None
        self._found = False
        self._invalidated = False

    # -- what the publisher asks at the end -----------------------------------

    def written_session(self) -> Session | None:
        """The persistent session if this request changed it (so the commit stores it), else None.

        Only the session's own record counts: a touch of its access time,
        which is a record of its own, does not.
        """
        session = self._session
        if session is None or session._p_jar is None or not session._p_changed:
            return None
        return session

    def cookie_to_send(self) -> str | None | bool:
        """What the client's cookie must become: an id, False to delete it, None to leave it."""
        session = self._session
        if session is not None and session.is_stored and session.id != self._cookie_id:
            return session.id
        if self._invalidated:
            return False
        return None

    # -- the mapping, delegated ---------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._zodbsession_unwrap()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._zodbsession_unwrap()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._zodbsession_unwrap()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._zodbsession_unwrap())

    def __len__(self) -> int:
        return len(self._zodbsession_unwrap())

    def __contains__(self, key: object) -> bool:
        return key in self._zodbsession_unwrap()

    def __repr__(self) -> str:
        state = repr(self._session) if self._session is not None else "unresolved"
        return f"<RequestSession {state}>"
