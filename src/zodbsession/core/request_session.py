"""``RequestSession``: one request's lazy view of its session.

The publisher puts one in ``environ["zodbsession.session"]`` before the
application runs, but looks nothing up until the application first uses it:
an application that never touches the session pays for no lookup and no
write. The first read finds the session named by the cookie (or starts a
transient one); the first write stores a new one. A cookie
that names no session is believed only once the transaction's snapshot is
known to be as new as the storage (``freshness.catch_up``, on that miss path
only): read-your-writes across app servers. The view also carries the
verbs that change what the client's cookie must say (``login``, ``rotate``,
``invalidate``, ``set_expiry``), which is how the publisher knows when to send
``Set-Cookie`` and with what ``Max-Age`` (``cookie_max_age``). ``settle``,
called by the front door once per attempt before it commits, saves (or
reports) what the application changed in place without marking it. The session's
flash queues, CSRF token and expiry readers are forwarded under the names of
``Session``, so framework adapters can hand this view out as it is.

To application code the view is a dict (``core.session_dict``): it has every
method of one, and ``as_dict()`` gives an actual ``dict`` whose storage the
view keeps in step with the data, for ``json.dumps`` and ``JSONResponse``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Literal

from transaction.interfaces import NoTransaction
from ZODB.Connection import Connection

from zodbsession.core.budget import client_address
from zodbsession.core.errors import UnsavedSessionChanges
from zodbsession.core.freshness import catch_up
from zodbsession.core.manager import SessionManager
from zodbsession.core.session import ExpiryValue, Session, ids_equal
from zodbsession.core.session_dict import DictMethods, SessionDict
from zodbsession.core.unsaved import Fingerprint, changed_keys, fingerprint, holds_only_immutables
from zodbsession.core.unsaved import log as unsaved_log


class RequestSession(DictMethods):
    """The current request's session, resolved on first use.

    *cookie_id* is the id the request's cookie names, already checked to be
    well formed (``is_well_formed_id``), or None: the publisher checks it once.
    *more_ids* are further well-formed ids from cookies of the same name
    (``cookies.session_cookie_ids``), tried in order when *cookie_id* names no
    live session; the cookie is then sent again with the one found. *client*
    is the request's address: storing a new session and logging in are
    charged to it (``SessionManager.new_per_address_per_minute``); or give
    *request* (a WSGI environ, an ASGI scope) and the address is read from it
    only when something is charged, which a read never is.

    To application code it is a dict with dict's methods (``DictMethods``:
    ``popitem`` takes the last key, ``copy`` gives a plain dict, ``==``
    compares contents), but not an instance of ``dict``: ``as_dict()`` is one.

    Threading: belongs to the one request (thread or task) it was made for.
    """

    def __init__(self, manager: SessionManager, connection: Connection, cookie_id: str | None,
                 *, more_ids: Sequence[str] = (), client: str | None = None, request: Any = None):
        self._manager = manager
        self._given_client = client
        self._request = request
        self._connection = connection
        self._cookie_id = cookie_id
        self._more_ids = tuple(more_ids)
        self._session: Session | None = None
        self._found = False
        self._invalidated = False
        self._expiry_changed = False
        self._loaded: Fingerprint | None = None  # the found session's data as it was loaded
        self._clean = False  # settle() found the data as loaded
        self._used = False  # the application asked for the session (not only a preload)
        self._faces: list[SessionDict] = []  # as_dict()'s, whose storage mirrors the data

    @property
    def _client(self) -> str | None:
        """The address new sessions and logins are charged to (read from the request when asked)."""
        if self._given_client is None and self._request is not None:
            self._given_client = client_address(self._request)
            self._request = None
        return self._given_client

    # -- resolution ---------------------------------------------------------

    def _zodbsession_unwrap(self) -> Session:
        """The persistent session behind this view, looked up or started now: the application uses it."""
        self._used = True
        return self._resolve()

    def _resolve(self) -> Session:
        """The persistent session, looked up or started now, without counting as the application's use.

        The ASGI door preloads the session this way, so that a request whose
        application never reads it answers as one that did not touch it.
        """
        if self._session is None:
            session = None
            if self._cookie_id is not None and not self._invalidated:
                session = self._find_cookie_session()
                if session is None and catch_up(self._sessions_connection()):
                    # The snapshot was older than the storage: a session
                    # another server just created may be there now.
                    session = self._find_cookie_session()
            self._found = session is not None
            # Only a found session can hold a change that nothing marked: a
            # new one is stored by its first write, which marks it. Nor can
            # one whose values are all immutable (``unsaved``): no fingerprint.
            self._loaded = (fingerprint(session._data)
                            if session is not None and not holds_only_immutables(session._data)
                            else None)
            self._clean = False
            if self._loaded is not None:
                self._on_abort_drop_unsaved()
            if session is None:
                session = self._manager.new(self._connection)
                session._v_attach = self._charged(session._v_attach)
            self._session = session
            if self._faces:
                self._mirror()
        return self._session

    def _charged(self, attach: Any) -> Any:
        """*attach*, storing the new session only once the client's budget allows it."""
        def charged_attach(session: Session) -> None:
            self._manager.charge_new(self._client)
            attach(session)
        return charged_attach

    def _find_cookie_session(self) -> Session | None:
        """The live session the cookie (or one of the further cookies) names, or None."""
        # The publisher passes only well-formed cookie ids (or None).
        assert self._cookie_id is not None
        session = self._manager._get_well_formed(self._connection, self._cookie_id)
        for other_id in self._more_ids:
            if session is not None:
                break
            session = self._manager._get_well_formed(self._connection, other_id)
        return session

    def _sessions_connection(self) -> Connection:
        """The connection of the database that holds the sessions."""
        if self._manager.database is None:
            return self._connection
        return self._connection.get_connection(self._manager.database)

    def _on_abort_drop_unsaved(self) -> None:
        """Make the transaction's abort forget the in-place changes, as it forgets the marked ones."""
        try:
            txn = self._connection.transaction_manager.get()
        except NoTransaction:
            return
        txn.addAfterAbortHook(self._drop_unsaved)

    def _drop_unsaved(self, *_: Any) -> None:
        # An abort reverts only the objects that joined the transaction: a
        # change made in place would stay in the cache, be read by the next
        # request and stored by its next write. Dropping the session's state
        # makes the next use load what is stored (only when it did change).
        session, loaded = self._session, self._loaded
        if session is None or loaded is None or self._clean or session._p_jar is None:
            return
        if session._p_changed is False and changed_keys(loaded, session._data):
            session._p_invalidate()

    def peek(self, key: str, default: Any = None) -> Any:
        """The value of *key* in the cookie's session, read without counting as a use.

        For an adapter that must decide from the session whether to send its
        cookie again (Flask's ``SESSION_REFRESH_EACH_REQUEST`` for a
        permanent session): the view stays unresolved, records no access,
        and a session that is not live (or no cookie) gives *default*.
        """
        if self._session is not None:
            return self._session._data.get(key, default)
        if self._cookie_id is None or self._invalidated:
            return default
        container = self._manager.container(self._connection, create=False)
        if container is None:
            return default
        for session_id in (self._cookie_id, *self._more_ids):
            session = container.get(session_id)
            if session is not None and ids_equal(session.id, session_id) and self._manager.is_live(session):
                return session._data.get(key, default)
        return default

    @property
    def resolved(self) -> bool:
        """Whether the session has been looked up (or started) in this request."""
        return self._session is not None

    @property
    def used(self) -> bool:
        """Whether the application read or changed the session in this request (its response varies on it)."""
        return self._used or self._invalidated

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
    def created(self) -> float:
        """When the session was started, in seconds since the epoch (Pyramid's ``created``)."""
        return self._zodbsession_unwrap().created

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
        if session.is_stored:  # a new session's store is charged when it happens
            self._manager.charge_new(self._client)
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
        self._expiry_changed = False
        self._mirror()  # the next use starts a new, empty session

    logout = invalidate

    def save_changes(self) -> None:
        """Mark the session changed (after mutating a nested value in place)."""
        self._manager.save_changes(self._zodbsession_unwrap())

    #: Pyramid's name for ``save_changes``.
    changed = save_changes

    @property
    def new(self) -> bool:
        """Pyramid's name for ``is_new``."""
        return self.is_new

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
        self._expiry_changed = False
        if self._faces:
            self._zodbsession_unwrap()  # a dict face shows the data as stored, now

    # -- per-session expiry ---------------------------------------------------

    def set_expiry(self, value: ExpiryValue) -> None:
        """Give the session its own expiry (see ``SessionManager.set_expiry``).

        A change makes the publisher send the cookie again, with the
        ``Max-Age`` the new expiry asks for.
        """
        if self._manager.set_expiry(self._zodbsession_unwrap(), value):
            self._expiry_changed = True

    def get_expiry_age(self) -> int:
        """Whole seconds until the session expires (0 once it has)."""
        return self._manager.get_expiry_age(self._zodbsession_unwrap())

    def get_expiry_date(self) -> datetime:
        """The moment the session expires, an aware UTC ``datetime``."""
        return self._manager.get_expiry_date(self._zodbsession_unwrap())

    def get_expire_at_browser_close(self) -> bool:
        """Whether the session's cookie lasts only until the browser closes (``set_expiry(0)``)."""
        return self._manager.get_expire_at_browser_close(self._zodbsession_unwrap())

    # -- flash messages and the CSRF token, forwarded ---------------------------

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        """Queue *msg* for a later request (Pyramid's ``flash``)."""
        self._zodbsession_unwrap().flash(msg, queue, allow_duplicate)
        self._mirror()

    def peek_flash(self, queue: str = "") -> list[Any]:
        """The messages queued in *queue*, left in place."""
        return self._zodbsession_unwrap().peek_flash(queue)

    def pop_flash(self, queue: str = "") -> list[Any]:
        """The messages queued in *queue*, removed from it."""
        messages = self._zodbsession_unwrap().pop_flash(queue)
        self._mirror()
        return messages

    def new_csrf_token(self) -> str:
        """A fresh CSRF token, stored in the session."""
        token = self._zodbsession_unwrap().new_csrf_token()
        self._mirror()
        return token

    def get_csrf_token(self) -> str:
        """The session's CSRF token, made if it has none."""
        token = self._zodbsession_unwrap().get_csrf_token()
        self._mirror()
        return token

    def check_csrf_token(self, token: object) -> bool:
        """Whether *token* is the session's CSRF token (constant time; makes none)."""
        return self._zodbsession_unwrap().check_csrf_token(token)

    # -- what the publisher asks at the end -----------------------------------

    def settle(self) -> list[str]:
        """Save, or report, what the application changed in place without marking it.

        The front door calls it once per attempt, before it decides whether
        anything joined the transaction. For a session this request found,
        it compares the data with its fingerprint taken at load; if the
        session was not marked changed but differs, the manager's
        ``unsaved_changes`` policy marks it changed (``"save"``, ``"warn"``
        with a WARNING) or raises ``UnsavedSessionChanges`` (``"error"``).
        Returns the keys found changed in place (empty: nothing to do).

        Whatever ends the transaction in an abort (an exception, a 5xx, a
        conflict retried, ``"error"``) also drops such changes from memory:
        the next request loads the session as it is stored.
        """
        session, loaded = self._session, self._loaded
        if session is None or loaded is None or session._p_jar is None:
            return []
        # True: already marked, the commit stores it; None: a ghost, nothing in memory.
        if session._p_changed is None or session.rewritten:
            return []
        keys = changed_keys(loaded, session._data)
        if not keys:
            self._clean = True
            return []
        policy = self._manager.unsaved_changes
        if policy == "error":
            raise UnsavedSessionChanges(keys)
        if policy == "warn":
            unsaved_log.warning(
                "session %s...: %s changed in place without save_changes(); saved anyway",
                session.id[:8], ", ".join(map(repr, keys)))
        session._p_changed = True
        return keys

    def written_session(self) -> Session | None:
        """The persistent session if this request changed it (so the commit stores it), else None.

        A touch of its access time alone does not count (``Session.rewritten``).
        """
        session = self._session
        if session is None or session._p_jar is None or not session.rewritten:
            return None
        return session

    def cookie_to_send(self) -> str | None | bool:
        """What the client's cookie must become: an id, False to delete it, None to leave it."""
        session = self._session
        # (The cheap comparisons first: a read of its own cookie's session stops there.)
        if session is not None and (session.id != self._cookie_id or self._expiry_changed) and (
                session.is_stored):
            return session.id
        if self._invalidated:
            return False
        return None

    def cookie_max_age(self) -> int | Literal["session"] | None:
        """The ``max_age`` to give ``CookiePolicy.set_header`` for the cookie this request sends.

        None: the policy's default; ``"session"``: a cookie gone when the
        browser closes; else seconds, following the session's own expiry.
        """
        if self._session is None:
            return None
        return self._manager.cookie_max_age(self._session)

    # -- the dict face ---------------------------------------------------------

    def as_dict(self) -> SessionDict:
        """The session as an actual ``dict`` (a ``SessionDict``), for ``json.dumps`` and ``JSONResponse``.

        Its storage mirrors the data, kept in step by this view; its methods
        are this view's. A cookie's session is looked up now, so that the
        mirror is right from the start (a new session is empty). One per
        view: asking again gives the same dict.
        """
        if not self._faces:
            self.add_face(SessionDict())
        return self._faces[0]

    def add_face(self, face: SessionDict) -> None:
        """Make *face* (a ``SessionDict``, or an adapter's subclass of it) a dict face of this view.

        The cookie's session is looked up now, so that its storage is right
        from the start; from now on this view keeps it in step.
        """
        face._view = self
        self._faces.append(face)
        if self._cookie_id is not None and not self._invalidated:
            self._resolve()  # not a use: the ASGI door makes the face for every request
        self._mirror()

    def _mirror(self) -> None:
        """Make the dict faces' storage the session's data again (after a change not by one key)."""
        if self._faces:
            session = self._session
            data = session._data if session is not None else {}
            for face in self._faces:
                face._mirror(data)

    # -- the mapping, delegated ---------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._zodbsession_unwrap()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._zodbsession_unwrap()[key] = value
        for face in self._faces:
            face._mirror_set(key, value)

    def __delitem__(self, key: str) -> None:
        del self._zodbsession_unwrap()[key]
        for face in self._faces:
            face._mirror_del(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._zodbsession_unwrap())

    def __reversed__(self) -> Iterator[str]:
        return reversed(self._zodbsession_unwrap()._data)

    def __len__(self) -> int:
        return len(self._zodbsession_unwrap())

    def __contains__(self, key: object) -> bool:
        return key in self._zodbsession_unwrap()

    def clear(self) -> None:
        """Remove every key with one write; the session and its id stay (``invalidate()`` ends it)."""
        self._zodbsession_unwrap().clear()
        self._mirror()

    def __repr__(self) -> str:
        state = repr(self._session) if self._session is not None else "unresolved"
        return f"<RequestSession {state}>"
