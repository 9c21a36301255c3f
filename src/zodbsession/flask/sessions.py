"""Flask's session protocol over zodbsession's ``RequestSession``, inside a publisher or not.

``FlaskSession`` is what ``flask.session`` is; ``ZODBSessionInterface`` hands
out the publisher's session for a request running inside one, and outside
any (Flask's ``session_transaction()``, a bare ``test_request_context()``)
opens a connection of its own, committed by ``save_session``, which then
sets the cookie itself. The extension that installs it is ``zodbsession.flask``.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from email.utils import formatdate
from functools import partial
from typing import Any, Protocol

import transaction
from flask import Flask, Request, Response, has_request_context, request
from flask.sessions import SessionInterface, SessionMixin
from transaction.interfaces import NoTransaction
from ZODB import DB
from ZODB.Connection import Connection

from zodbsession.core.attempt import SessionUse
from zodbsession.core.commit import abort_quietly, commit
from zodbsession.core.manager import SessionManager
from zodbsession.core.request_session import RequestSession
from zodbsession.core.session import is_well_formed_id
from zodbsession.core.session_dict import DictMethods
from zodbsession.web.cookies import CookiePolicy, read_cookie
from zodbsession.web.headers import session_headers

log = logging.getLogger(__name__)

#: The environ key of the ``AttemptReport`` shared by the attempts of one request.
REPORT_KEY = "zodbsession.flask.report"


@dataclass
class AttemptReport:
    """What the last attempt of a request tells the extension's front, around its publisher.

    The publisher gives each attempt a copy of the environ; this object is
    shared by all of them, and reset at the start of each.
    """

    #: A permanent session's Max-Age, for the cookie the publisher sends.
    max_age: int | None = None
    #: The exception Flask reported, raised again past the publisher when Flask propagates errors.
    error: BaseException | None = None

    def reset(self) -> None:
        self.max_age = None
        self.error = None


class SessionSource(Protocol):
    """Where the session interface gets its database, manager and cookie policy."""

    manager: SessionManager
    cookie: CookiePolicy

    def get_db(self) -> DB: ...

    def current_cookie(self) -> CookiePolicy:
        """The cookie policy the application's configuration asks for now (Flask reads it each request)."""
        ...


class FlaskSession(SessionMixin, DictMethods):
    """``flask.session``: Flask's session protocol over one request's ``RequestSession``.

    ``modified`` is True once the view changed the session; setting it to
    True marks the session changed, as ``save_changes()`` does, which is how
    a Flask user stores a nested value mutated in place. ``permanent`` lives
    in the ``_permanent`` key, as with Flask's own sessions, and makes the
    cookie last ``PERMANENT_SESSION_LIFETIME``. ``new`` says whether the
    session was started in this request. zodbsession's verbs (``login``,
    ``logout``, ``rotate``, ``id``, ``user_id``...) are forwarded. It has
    dict's methods (``DictMethods``); like Flask's own ``session`` proxy it
    is no ``dict`` instance to ``json.dumps`` (``session.copy()`` is one).

    Threading: belongs to the one request it was opened for.
    """

    accessed = False
    _own: _OwnTransaction | None = None  # set when opened outside a publisher

    def __init__(self, request_session: RequestSession | None, lifetime: timedelta,
                 opener: Callable[[FlaskSession], RequestSession] | None = None) -> None:
        if (request_session is None) == (opener is None):
            raise TypeError("FlaskSession takes a RequestSession or an opener, one of the two")
        self._request_session = request_session
        self._opener = opener
        self._lifetime = lifetime
        self._modified = False

    @property
    def request_session(self) -> RequestSession:
        """The zodbsession view behind this session (outside a publisher, opened on first use)."""
        session = self._request_session
        if session is None:
            session = self._request_session = self._opener(self)  # type: ignore[misc]
        return session

    @property
    def opened(self) -> bool:
        """Whether the session has a connection yet (always, inside a publisher)."""
        return self._request_session is not None

    # -- Flask's protocol ----------------------------------------------------

    @property
    def modified(self) -> bool:
        """Whether the session was changed in this request."""
        return self._modified or self.request_session.written_session() is not None

    @modified.setter
    def modified(self, value: bool) -> None:
        self._modified = bool(value)
        if value:
            self.request_session.save_changes()

    @property
    def new(self) -> bool:  # type: ignore[override]
        """Whether the session was started in this request rather than found."""
        return self.request_session.is_new

    @property
    def permanent(self) -> bool:
        """Whether the cookie outlives the browser, for ``PERMANENT_SESSION_LIFETIME``."""
        return bool(self.get("_permanent", False))

    @permanent.setter
    def permanent(self, value: bool) -> None:
        value = bool(value)
        if value == self.permanent:
            return  # no write: reading a default must not store a session
        self["_permanent"] = value
        set_expiry = getattr(self.request_session, "set_expiry", None)
        if set_expiry is not None:  # per-session expiry, where the core session has it
            set_expiry(self.lifetime_seconds if value else None)

    @property
    def lifetime_seconds(self) -> int:
        """The permanent cookie's Max-Age: ``PERMANENT_SESSION_LIFETIME`` in seconds."""
        return int(self._lifetime.total_seconds())

    def cookie_max_age(self) -> int | None:
        """The Max-Age the session cookie must carry: None for a browser-session cookie.

        Flask's meaning, not the core's: a permanent cookie lasts
        ``PERMANENT_SESSION_LIFETIME`` from when it was last sent (each
        request, with ``SESSION_REFRESH_EACH_REQUEST``), which is the idle
        timeout ``permanent`` gives the session on the server.
        """
        return self.lifetime_seconds if self.permanent else None

    # -- the mapping, delegated --------------------------------------------

    # ``accessed`` is set here too, not only by Flask's request context
    # (which does so from Flask 3.1.3 on): any use of the data means the
    # response depends on the cookie.

    def __getitem__(self, key: str) -> Any:
        self.accessed = True
        return self.request_session[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.accessed = True
        self.request_session[key] = value
        self._modified = True

    def __delitem__(self, key: str) -> None:
        self.accessed = True
        del self.request_session[key]
        self._modified = True

    def __iter__(self) -> Iterator[str]:
        self.accessed = True
        return iter(self.request_session)

    def __reversed__(self) -> Iterator[str]:
        self.accessed = True
        return reversed(self.request_session)

    def __len__(self) -> int:
        self.accessed = True
        return len(self.request_session)

    def __contains__(self, key: object) -> bool:
        self.accessed = True
        return key in self.request_session

    def clear(self) -> None:
        """Remove every key with one write; the session and its id stay (``logout()`` ends it)."""
        self.accessed = True
        if len(self.request_session):
            self.request_session.clear()
            self._modified = True

    def __getattr__(self, name: str) -> Any:
        # Only reached for names not found here: zodbsession's own verbs.
        if name.startswith("_"):
            raise AttributeError(name)
        self.accessed = True  # user_id, login(), id...: the response depends on the cookie
        return getattr(self.request_session, name)

    def __repr__(self) -> str:
        return f"<FlaskSession {self.request_session!r}>"


class _OwnTransaction:
    """The connection and transaction of a session opened outside any publisher."""

    def __init__(self, db: DB) -> None:
        self.tm = transaction.TransactionManager(explicit=True)
        self.connection: Connection | None = db.open(transaction_manager=self.tm)
        self.tm.begin()

    def commit(self, session: RequestSession, manager: SessionManager) -> None:
        try:
            settle = getattr(session, "settle", None)
            if settle is not None:
                settle()
            written = session.written_session()
            if written is not None:
                manager.check_storable(written)
            commit(self.tm)
        except BaseException:
            abort_quietly(self.tm)
            raise
        finally:
            self.close()

    def close(self) -> None:
        """Abort what is left and give the connection back (also when never saved)."""
        if self.connection is not None:
            try:
                self.tm.get()
            except NoTransaction:  # committed already
                pass
            else:
                abort_quietly(self.tm)
            self.connection.close()
            self.connection = None

    def close_quietly(self) -> None:
        """``close`` for a finalizer, which runs at a collection, maybe after the database closed."""
        try:
            self.close()
        except Exception:
            log.warning("giving back the connection of an unsaved Flask session failed", exc_info=True)


class ZODBSessionInterface(SessionInterface):
    """Hands Flask the publisher's session; opens one of its own outside a publisher.

    What ``save_session`` does, as Flask's own cookie sessions do:

    - ``Vary: Cookie`` when the request accessed the session, and whenever
      it sends the cookie or deletes it;
    - a session emptied in this request (``clear()``, the last key popped)
      and bound to no user is ended on the server (``invalidate``) and its
      cookie deleted, as Flask deletes the cookie of an emptied session;
    - the cookie is sent again when the session changed, and a permanent
      session's on every request that carries it when
      ``SESSION_REFRESH_EACH_REQUEST`` is true (its ``_permanent`` key is
      read without counting as a use; the refresh records an access); a
      permanent cookie's ``Max-Age`` and ``Expires`` are
      ``PERMANENT_SESSION_LIFETIME``.

    Inside a publisher it sets no cookie of its own for a new, rotated or
    ended session: the publisher sends that one after the commit, and the
    extension's front gives it the attributes of the configuration of the
    moment. Outside one it commits its own transaction and sets the cookie
    on the response itself, which is how ``client.session_transaction()``
    hands the test client its cookie.
    """

    #: The session's values are pickled into ZODB, not serialized to JSON.
    pickle_based = True

    def __init__(self, state: SessionSource) -> None:
        self.state = state

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        rs = request.environ.get("zodbsession.session")
        if isinstance(rs, RequestSession):
            return FlaskSession(rs, app.permanent_session_lifetime)
        # Outside a publisher: a connection of our own, opened on first use
        # (Flask's session_transaction opens a session it never uses, too).
        cookie_id = read_cookie(request.environ.get("HTTP_COOKIE"), self.state.cookie.name)
        if not is_well_formed_id(cookie_id):
            cookie_id = None
        return FlaskSession(None, app.permanent_session_lifetime, opener=partial(self._open_own, cookie_id))

    def _open_own(self, cookie_id: str | None, session: FlaskSession) -> RequestSession:
        own = _OwnTransaction(self.state.get_db())
        session._own = own
        # A session used but never saved (a bare test_request_context) still
        # gives its connection back, when it is collected.
        weakref.finalize(session, own.close_quietly)
        return RequestSession(self.state.manager, own.connection, cookie_id)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, FlaskSession):
            return
        if session.accessed:
            response.vary.add("Cookie")
        if session._opener is None:
            self._save_in_publisher(app, session, response)
            return
        own = session._own
        if own is None:
            return  # never used: nothing to commit, no cookie to change
        rs = session.request_session
        if _end_if_emptied(session):
            response.vary.add("Cookie")
        refresh = self._refresh(app, session)
        to_send = rs.cookie_to_send()
        max_age = session.lifetime_seconds if rs.peek("_permanent") else None
        stored = rs.resolved and rs._zodbsession_unwrap().is_stored
        own.commit(rs, self.state.manager)
        https = bool(has_request_context() and request.is_secure)
        policy = self.state.current_cookie()
        if isinstance(to_send, str) or (refresh and stored):
            _add_session_headers(response, policy, SessionUse(rs.id, max_age, used=True), https,
                                 flask_cookie(policy, rs.id, https, max_age))
        elif to_send is False:
            _add_session_headers(response, policy, SessionUse(False, used=True), https)

    def _save_in_publisher(self, app: Flask, session: FlaskSession, response: Response) -> None:
        rs = session.request_session
        if _end_if_emptied(session):
            response.vary.add("Cookie")  # the publisher deletes the cookie after the commit
            return
        report = request.environ.get(REPORT_KEY)
        if report is None:
            return  # not our own publisher (zodbsession serve): the server's cookie policy
        permanent = bool(rs.peek("_permanent"))
        report.max_age = session.lifetime_seconds if permanent else None
        if not self._refresh(app, session) or rs.cookie_to_send() is not None:
            return  # no refresh asked, or the publisher sends the cookie anyway
        if rs._zodbsession_unwrap().is_stored:  # a refreshed cookie is an access: recorded
            policy = self.state.current_cookie()
            _add_session_headers(response, policy, SessionUse(rs.id, report.max_age, used=True),
                                 request.is_secure,
                                 flask_cookie(policy, rs.id, request.is_secure, report.max_age))

    def _refresh(self, app: Flask, session: FlaskSession) -> bool:
        """Whether the session's cookie is sent again: Flask's ``should_set_cookie``.

        When the session changed, or it is permanent and
        ``SESSION_REFRESH_EACH_REQUEST`` asks. ``permanent`` is read without
        marking the session accessed (Flask's own reads it after deciding
        ``Vary``, too).
        """
        rs = session.request_session
        if rs.resolved and rs.written_session() is not None:
            return True
        return bool(rs.peek("_permanent") and app.config["SESSION_REFRESH_EACH_REQUEST"])


def _add_session_headers(response: Response, policy: CookiePolicy, use: SessionUse, https: bool,
                         set_cookie: tuple[str, str] | None = None) -> None:
    """Give *response* the session's headers, as ``zodbsession.web.headers`` decides them for every door."""
    headers = session_headers(response.headers.to_wsgi_list(), policy, use, https=https,
                              set_cookie=set_cookie)
    response.headers.clear()
    response.headers.extend(headers)


def _end_if_emptied(session: FlaskSession) -> bool:
    """End a stored session this request emptied and no user is bound to; whether it was ended.

    Flask deletes the cookie of a session modified to be empty; zodbsession
    also removes the session it named. A session with a user (``login``)
    holds the login, so it stays.
    """
    rs = session.request_session
    if not rs.resolved or rs.written_session() is None or len(rs) or rs.user_id is not None:
        return False
    rs.invalidate()
    return True


def flask_cookie(policy: CookiePolicy, session_id: str, https: bool, max_age: int | None) -> tuple[str, str]:
    """The ``Set-Cookie`` Flask would send: *policy*'s, with ``Max-Age`` and ``Expires`` if permanent."""
    name, value = policy.set_header(session_id, https=https, max_age="session")
    return name, with_max_age(value, max_age)


def with_max_age(cookie: str, max_age: int | None) -> str:
    """*cookie* (a Set-Cookie value) with ``Max-Age=max_age`` and its ``Expires``, in place of any."""
    if max_age is None:
        return cookie
    head, *attributes = cookie.split(";")
    kept = [a.strip() for a in attributes if not a.strip().lower().startswith(("max-age=", "expires="))]
    expires = formatdate(time.time() + int(max_age), usegmt=True)
    return "; ".join([head, f"Max-Age={int(max_age)}", f"Expires={expires}", *kept])
