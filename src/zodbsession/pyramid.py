"""zodbsession for Pyramid: ``config.include("zodbsession.pyramid")``.

This module owns the Pyramid front door: it reads the ``zodbsession.*``
settings of the ini file, gives every request a ``request.session`` that
provides Pyramid's ``ISession``, stores it through the request's ZODB
connection joined to ``request.tm`` (pyramid_tm's transaction), and sends the
session cookie from a response callback once the transaction has committed.
pyramid_tm ends the transaction and pyramid_retry retries conflicts; no
``SessionPublisher`` is involved, so one transaction manager manages each
request.

What a request's end does to the session, and what the client is told:

================================  ===============================  ==================
pyramid_tm ends the request with  the session (and the app's data)  ``Set-Cookie``
================================  ===============================  ==================
commit                            stored with the app's changes     as the session asks
abort (exception, doom, veto)     rolled back with them             none: cookie as it was
a conflict (``TransientError``)   rolled back; pyramid_retry        that of the attempt
                                  replays with a fresh request      that commits
================================  ===============================  ==================

"As the session asks" is ``RequestSession.cookie_to_send()`` as it stood just
before the commit: a new id (a stored new session, ``login``, ``rotate``),
a deletion (``invalidate`` without a new session) or nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import logging
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import transaction
from pyramid.config import Configurator
from pyramid.events import ApplicationCreated
from pyramid.interfaces import ISession
from pyramid.request import Request
from pyramid.response import Response
from transaction.interfaces import NoTransaction
from ZODB import DB
from ZODB.Connection import Connection
from zope.interface import implementer

from zodbsession.config import Settings, _build
from zodbsession.cookies import CookiePolicy, session_cookie_ids
from zodbsession.errors import ConfigError, SessionBusy, SessionWaitTimeout
from zodbsession.janitor import Janitor
from zodbsession.locks import KeyedLocks
from zodbsession.manager import SessionManager
from zodbsession.registry import Scope
from zodbsession.registry import registry as scoped_registry
from zodbsession.request_session import RequestSession
from zodbsession.server import cookie_policy

log = logging.getLogger(__name__)

#: The prefix of every setting this module reads from the Pyramid settings.
PREFIX = "zodbsession."

#: {ini key -> the ``Settings`` key it sets}; validated by ``zodbsession.config``.
INI_KEYS: dict[str, str] = {
    "zodbsession.uri": "storage.uri",
    "zodbsession.sessions_uri": "storage.sessions_uri",
    "zodbsession.pool_size": "storage.pool_size",
    "zodbsession.idle_timeout": "sessions.idle_timeout",
    "zodbsession.max_lifetime": "sessions.max_lifetime",
    "zodbsession.access_resolution": "sessions.access_resolution",
    "zodbsession.max_sessions": "sessions.max_sessions",
    "zodbsession.max_session_bytes": "sessions.max_session_bytes",
    "zodbsession.cookie_name": "cookie.name",
    "zodbsession.cookie_path": "cookie.path",
    "zodbsession.cookie_domain": "cookie.domain",
    "zodbsession.secure": "cookie.secure",
    "zodbsession.httponly": "cookie.httponly",
    "zodbsession.samesite": "cookie.samesite",
    "zodbsession.persistent": "cookie.persistent",
    "zodbsession.serialize_same_session": "publisher.serialize_same_session",
    "zodbsession.janitor_interval": "janitor.interval",
    "zodbsession.janitor_batch_size": "janitor.batch_size",
}
#: The one key of this adapter's own: the pyramid_zodbconn database holding the sessions.
DATABASE_KEY = "zodbsession.database"


def settings_from_pyramid(settings: Mapping[str, Any]) -> Settings:
    """The zodbsession ``Settings`` the ``zodbsession.*`` keys of a Pyramid settings dict give.

    Values may be the ini file's strings or typed Python values; both are
    checked by ``zodbsession.config``, exactly like the TOML file's. Raises
    ``ConfigError`` naming the ini key (``zodbsession.idle_timeout``), with a
    "did you mean" for a misspelt one.
    """
    source = "the Pyramid settings"
    data: dict[str, Any] = {}
    for key, value in settings.items():
        if not key.startswith(PREFIX) or key == DATABASE_KEY:
            continue
        if key not in INI_KEYS:
            match = difflib.get_close_matches(key, [*INI_KEYS, DATABASE_KEY], n=1, cutoff=0.6)
            hint = f"; did you mean {match[0]!r}?" if match else ""
            raise ConfigError(key, f"unknown setting{hint} (got {value!r} from {source})")
        data[INI_KEYS[key]] = value
    try:
        return _build([(source, data, True)])
    except ConfigError as exc:
        # Say it in the ini file's words: its key, and the keys the rule mentions.
        to_ini = {dotted: ini for ini, dotted in INI_KEYS.items()}
        problem = exc.problem
        for dotted, ini in to_ini.items():
            problem = problem.replace(dotted, ini)
        raise ConfigError(to_ini.get(exc.key, exc.key), problem) from None


class ZodbSessions:
    """What ``config.include("zodbsession.pyramid")`` set up; ``request.registry.zodbsession``.

    ``db`` is the database holding the sessions: zodbsession's own
    (``zodbsession.uri``) or pyramid_zodbconn's primary database, in which
    case ``database`` may name one of its named databases
    (``zodbconn.uri.<name>``). ``manager`` and ``cookie`` are built once from
    the settings.

    Threading: built at configuration time, read-only afterwards; every
    request thread shares it.
    """

    def __init__(self, settings: Settings, *, own_uri: bool, database: str | None) -> None:
        self.settings = settings
        manager = settings.session_manager()
        if database is not None:
            manager = dataclasses.replace(manager, database=database)
        self.manager: SessionManager = manager
        self.cookie: CookiePolicy = cookie_policy(settings)
        self.own_uri = own_uri
        # One lock per session id, so that one session's requests run one at a time here.
        self.session_locks = KeyedLocks() if settings.publisher.serialize_same_session else None
        self.db: DB | None = None
        self.zodbconn = False
        self.janitor: Janitor | None = None

    def open(self, registry: Any) -> None:
        """Open (or find pyramid_zodbconn's) database and make the session container once."""
        zodbconn_db = (getattr(registry, "_zodb_databases", None) or {}).get("")
        if zodbconn_db is not None and self.own_uri:
            raise ConfigError("zodbsession.uri", "pyramid_zodbconn is configured (zodbconn.uri), and "
                              "the sessions live in its database: remove zodbsession.uri, or keep "
                              "them apart with zodbconn.uri.sessions and zodbsession.database = sessions")
        if zodbconn_db is None and not self.own_uri:
            raise ConfigError("zodbsession.uri", "is not set: give the sessions a database "
                              "(zodbsession.uri = file://var/Data.fs, or memory:// for tests), "
                              "or configure pyramid_zodbconn (zodbconn.uri) to share the app's")
        if zodbconn_db is not None:
            self.db, self.zodbconn = zodbconn_db, True
            named = self.manager.database
            if named is not None and named not in zodbconn_db.databases:
                raise ConfigError(DATABASE_KEY, f"names no pyramid_zodbconn database (got {named!r}; "
                                  f"configured: {sorted(n for n in zodbconn_db.databases if n)})")
        else:
            self.db = self.settings.open_db()
        # Made once here, so that concurrent first requests don't all create it.
        with self.db.transaction() as connection:
            self.manager.container(connection)

    def start_janitor(self) -> None:
        """Start the expiry sweep (``zodbsession.janitor_interval``; 0 turns it off)."""
        if self.janitor is None and self.db is not None:
            janitor = self.settings.janitor
            self.janitor = Janitor(self.db, self.manager, interval=janitor.interval,
                                   batch_size=janitor.batch_size).start()

    def close(self) -> None:
        """Stop the janitor and close zodbsession's own database (not pyramid_zodbconn's)."""
        if self.janitor is not None:
            self.janitor.stop()
            self.janitor = None
        if self.db is not None and not self.zodbconn:
            self.db.close()

    def connection(self, request: Request) -> Connection:
        """The request's ZODB connection, on ``request.tm``: pyramid_zodbconn's, or one of ours."""
        if self.zodbconn:
            import pyramid_zodbconn

            return pyramid_zodbconn.get_connection(request)
        connection = request.__dict__.get("_zodbsession_connection")
        if connection is not None:
            return connection
        connection = self.db.open(transaction_manager=request.tm)  # type: ignore[union-attr]
        request._zodbsession_connection = connection

        def close(_request: Request) -> None:
            with contextlib.suppress(NoTransaction):
                connection.transaction_manager.abort()
            connection.close()

        request.add_finished_callback(close)
        return connection


@implementer(ISession)
class PyramidSession(MutableMapping[str, Any]):
    """``request.session``: Pyramid's ``ISession`` over the request's ``RequestSession``.

    Everything else zodbsession's session offers (``login``, ``rotate``,
    ``user_id``, the expiry verbs...) is reachable as an attribute too, and
    the underlying view is ``request_session``. Values need not be JSON: they
    are pickled by ZODB, so persistent objects and plain Python values alike
    can be stored (but mutate nested values in place only with ``changed()``).

    Threading: belongs to the one request it was made for.
    """

    def __init__(self, request_session: RequestSession) -> None:
        self.request_session = request_session

    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found here: zodbsession's own verbs.
        return getattr(self.__dict__["request_session"], name)

    # -- ISession's attributes and special methods ----------------------------

    @property
    def created(self) -> float:
        """When the session was started (epoch seconds)."""
        return self.request_session._zodbsession_unwrap().created

    @property
    def new(self) -> bool:
        """Whether the session was started in this request rather than found."""
        return self.request_session.is_new

    def invalidate(self) -> None:
        """End the session on the server; later use in this request starts a new one."""
        self.request_session.invalidate()

    def changed(self) -> None:
        """Mark the session changed, after mutating a nested value in place."""
        self.request_session.save_changes()

    def login(self, user_id: str) -> None:
        """Bind the session to *user_id*: a new session id and a new CSRF token.

        Both change, as Django's ``auth.login`` does: a token seen before the
        login (by whoever planted the session) must not be valid after it.
        """
        self.request_session.login(user_id)
        self.new_csrf_token()

    # -- flash messages and CSRF: the core session's ---------------------------

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        """Append *msg* to the flash *queue* (unless it is there and duplicates are refused)."""
        self.request_session.flash(msg, queue, allow_duplicate)

    def peek_flash(self, queue: str = "") -> list[Any]:
        """The messages of the flash *queue*, left in place."""
        return self.request_session.peek_flash(queue)

    def pop_flash(self, queue: str = "") -> list[Any]:
        """The messages of the flash *queue*, removed from the session."""
        return self.request_session.pop_flash(queue)

    def new_csrf_token(self) -> str:
        """A fresh CSRF token bound to this session, replacing the previous one."""
        return self.request_session.new_csrf_token()

    def get_csrf_token(self) -> str:
        """This session's CSRF token, made now if it has none."""
        return self.request_session.get_csrf_token()

    # -- the mapping, delegated -----------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self.request_session[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.request_session[key] = value

    def __delitem__(self, key: str) -> None:
        del self.request_session[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.request_session)

    def __len__(self) -> int:
        return len(self.request_session)

    def __contains__(self, key: object) -> bool:
        return key in self.request_session

    def __repr__(self) -> str:
        return f"<PyramidSession {self.request_session!r}>"


class _CookieDecision:
    """Decides one request's ``Set-Cookie`` from the transactions that commit.

    A transaction synchronizer on ``request.tm``: each transaction of the
    request gets a before-commit hook that settles the session, checks that
    it can be stored and records what the cookie must say; only a commit that
    succeeds makes that the answer. A transaction that aborts decides nothing,
    so a rolled-back login sends no cookie.

    Threading: belongs to one request.
    """

    def __init__(self, sessions: ZodbSessions, request_session: RequestSession) -> None:
        self.sessions = sessions
        self.request_session = request_session
        # (cookie_to_send(), cookie_max_age()) as the last commit left them
        self.decided: tuple[str | bool | None, int | str | None] = (None, None)

    # ISynchronizer
    def newTransaction(self, txn: transaction.interfaces.ITransaction) -> None:  # noqa: N802
        txn.addBeforeCommitHook(self._before_commit, (txn,))

    def beforeCompletion(self, txn: Any) -> None:  # noqa: N802
        pass

    def afterCompletion(self, txn: Any) -> None:  # noqa: N802
        pass

    def _before_commit(self, txn: Any) -> None:
        hooks = list(txn.getBeforeCommitHooks())
        if hooks and hooks[-1][0] != self._before_commit:
            # Others were registered after this one (the app's, through the
            # scope's before_commit): they may still change the session, so
            # settle and decide after them, last.
            txn.addBeforeCommitHook(self._before_commit, (txn,))
            return
        session = self.request_session
        settle = getattr(session, "settle", None)
        if settle is not None:
            settle()
        written = session.written_session()
        if written is not None:
            # A value that cannot be stored fails here, naming its key.
            self.sessions.manager.check_storable(written)
        decided = (session.cookie_to_send(), session.cookie_max_age())
        txn.addAfterCommitHook(self._after_commit, (decided,))

    def _after_commit(self, committed: bool, decided: tuple[str | bool | None, int | str | None]) -> None:
        if committed:
            self.decided = decided

    def set_cookie(self, request: Request, response: Response) -> None:
        """The response callback: add the ``Set-Cookie`` the committed session asks for.

        A response that used the session also gets ``Vary: Cookie``: it is
        one user's, and a shared cache must not hand it to another.
        """
        if self.request_session.resolved and "cookie" not in {v.lower() for v in response.vary or ()}:
            response.vary = (*(response.vary or ()), "Cookie")
        cookie, max_age = self.decided
        https = request.scheme == "https"
        policy = self.sessions.cookie
        if isinstance(cookie, str):
            response.headerlist.append(policy.set_header(cookie, https=https, max_age=max_age))
        elif cookie is False:
            response.headerlist.append(policy.delete_header(https=https))


def get_connection(request: Request) -> Connection:
    """The ZODB connection ``request.session`` is stored through, joined to ``request.tm``.

    pyramid_zodbconn's when it is configured (the same as
    ``pyramid_zodbconn.get_connection(request)``), else the one zodbsession
    opens on its own database for this request; the app's own persistent
    objects changed through it commit or abort with the session. Closed when
    the request is finished.
    """
    return request.registry.zodbsession.connection(request)


def session_factory(request: Request) -> PyramidSession:
    """Pyramid's session factory: the request's session, joined to ``request.tm``.

    Called by Pyramid on the first use of ``request.session``; nothing is
    looked up before that, and a session only read writes nothing.
    """
    sessions: ZodbSessions = request.registry.zodbsession
    if "zodbsession.session" in request.environ:
        raise ConfigError("zodbsession.pyramid", "this Pyramid application runs inside a zodbsession "
                          "SessionPublisher (zodbsession serve --app, or a wrapper), which would "
                          "manage a second transaction; with zodbsession.pyramid, pyramid_tm manages "
                          "it: serve the Pyramid app itself (pserve, waitress-serve, gunicorn)")
    # An exception view rendering pyramid_tm's failed commit (a conflict on
    # its way to pyramid_retry) runs after the transaction: it may read the
    # session, and what it writes is never committed.
    if not request.environ.get("tm.active") and getattr(request, "exception", None) is None:
        raise ConfigError("zodbsession.pyramid", "request.session was used outside pyramid_tm's "
                          "transaction (in a tween over pyramid_tm, or for a request tm.activate_hook "
                          "excluded): the session would never be committed")
    connection = sessions.connection(request)
    # Every well-formed id of the cookie's name, first first: a stale cookie
    # for a parent path must not hide the live one.
    ids = session_cookie_ids(request.environ.get("HTTP_COOKIE"), sessions.cookie.name)
    request_session = RequestSession(sessions.manager, connection, ids[0] if ids else None,
                                     more_ids=ids[1:])
    decision = _CookieDecision(sessions, request_session)
    tm = request.tm
    tm.registerSynch(decision)  # attaches to the current transaction too
    request.add_response_callback(decision.set_cookie)
    # outer: the scope's hooks go to pyramid_tm's transaction, which pyramid_tm ends.
    scoped_registry.set(Scope(connection, request_session, request.environ, outer=True))

    def finished(_request: Request) -> None:
        scoped_registry.clear()
        with contextlib.suppress(KeyError):
            tm.unregisterSynch(decision)

    request.add_finished_callback(finished)
    return PyramidSession(request_session)


def serialize_tween_factory(handler: Callable[[Request], Response], registry: Any
                            ) -> Callable[[Request], Response]:
    """A tween over pyramid_tm: one session's requests, one at a time in this process.

    Parallel requests on one session (a page firing several calls) would
    otherwise conflict with each other and be retried, or fail after the last
    retry. Each attempt holds the lock of the id its cookie names, from
    before pyramid_tm begins to after it commits; the queue behind one
    session is bounded: a request past it is answered 429, one that waited
    too long 503, both with ``Retry-After``.
    """
    sessions: ZodbSessions = registry.zodbsession
    if sessions.session_locks is None:
        return handler

    def serialize(request: Request) -> Response:
        ids = session_cookie_ids(request.environ.get("HTTP_COOKIE"), sessions.cookie.name)
        locks = sessions.session_locks
        if not ids or locks is None:
            return handler(request)
        try:
            with locks.hold(ids[0]):
                return handler(request)
        except SessionBusy as exc:
            log.warning("%s %s: refused: %s", request.method, request.path_info, exc)
            return Response("this session is busy, please retry", content_type="text/plain",
                            status=503 if isinstance(exc, SessionWaitTimeout) else 429,
                            headers={"Retry-After": str(exc.retry_after)})

    return serialize


def includeme(config: Configurator) -> None:
    """Set up zodbsession as the session factory, on pyramid_tm and pyramid_retry.

    Includes ``pyramid_tm`` (the transaction) and ``pyramid_retry`` (the
    conflict retries) if the application has not; reads and checks the
    ``zodbsession.*`` settings now, and opens the database when the
    configuration is committed (after pyramid_zodbconn's, whatever the order
    of the includes). The expiry janitor starts with the application.
    """
    raw = config.get_settings()
    settings = settings_from_pyramid(raw)
    database = raw.get(DATABASE_KEY) or None
    sessions = ZodbSessions(settings, own_uri="zodbsession.uri" in raw, database=database)
    config.registry.zodbsession = sessions
    config.include("pyramid_tm")
    config.include("pyramid_retry")
    config.set_session_factory(session_factory)
    config.add_tween("zodbsession.pyramid.serialize_tween_factory", over="pyramid_tm.tm_tween_factory")
    config.action("zodbsession.pyramid", sessions.open, args=(config.registry,), order=100)
    config.add_subscriber(lambda _event: sessions.start_janitor(), ApplicationCreated)
