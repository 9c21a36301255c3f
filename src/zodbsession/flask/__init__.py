"""``zodbsession.flask``: Flask's ``session`` as a zodbsession session, one transaction per request.

``ZODBSession(app)`` (or ``ext.init_app(app)``) wraps ``app.wsgi_app`` in a
``SessionPublisher`` and installs a ``SessionInterface`` that hands Flask the
publisher's ``RequestSession``; the view reaches the same transaction's ZODB
connection with ``connection()``. So the session and the application's own
objects commit together or not at all, conflicts are retried with the request
replayed, and the publisher, not Flask, decides and sends the session cookie.

How a Flask request ends, by the publisher's table:

========================================  ============  ===================================
what the view (or a hook) did             transaction   answer
========================================  ============  ===================================
returned a response below 500             commit        the response
``redirect()``, ``abort(4xx)``            commit        the redirect / the 4xx page
raised ``Redirect`` / ``PublishError``    commit        the error's status, headers, body
returned a 5xx, or raised (Flask's 500)   abort         Flask's answer
raised a ``TransientError`` (conflict)    abort, retry  the replayed request's answer
========================================  ============  ===================================

When Flask propagates exceptions (``PROPAGATE_EXCEPTIONS``, else under
``TESTING`` or debug) an exception is raised again past the publisher once it
has aborted, so that the test client and the debugger see it as usual.

Under ``zodbsession serve --app`` the server's publisher already runs the
request: the extension sees ``environ["zodbsession.session"]`` and joins it
rather than opening a second transaction; the server takes the app's
database, cookie and timeouts from ``ExtensionState.server_settings()``, so
the app behaves the same under any server. Outside any publisher (``client.session_transaction()``,
a bare ``test_request_context()``) the session interface opens a connection
of its own and commits it in ``save_session``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypedDict, TypeVar, cast

import transaction
from flask import Flask, Response, current_app, got_request_exception, has_request_context, request
from flask import session as flask_session
from transaction.interfaces import TransientError
from ZODB import DB
from ZODB.Connection import Connection

from zodbsession.core.commit import abort_quietly, commit
from zodbsession.core.errors import ConfigError, NoActiveRequest, PublishError
from zodbsession.core.manager import SessionManager
from zodbsession.core.registry import Scope, registry
from zodbsession.core.request_session import RequestSession
from zodbsession.flask.sessions import (
    REPORT_KEY,
    AttemptReport,
    FlaskSession,
    ZODBSessionInterface,
    flask_cookie,
)
from zodbsession.ops.janitor import Janitor
from zodbsession.web.cookies import CookiePolicy
from zodbsession.web.wsgi.publisher import SessionPublisher, StartResponse, WSGIApp

if TYPE_CHECKING:
    from werkzeug.local import LocalProxy

T = TypeVar("T")

#: Where ``app.extensions`` keeps the extension's per-application state.
EXTENSION_KEY = "zodbsession"

#: The environ key of a ``TransientError`` Flask answered with a 500, raised again for a retry.
_TRANSIENT = "zodbsession.flask.transient"

__all__ = ["EXTENSION_KEY", "ExtensionState", "FlaskSession", "ZODBSession", "ZODBSessionInterface",
           "connection", "cookie_policy_from", "root"]


class ExtensionState:
    """What the extension keeps for one Flask application: settings, database, publisher.

    Threading: built once in ``init_app``; the database and publisher are
    made on first need, under a lock, so that importing the application
    opens nothing (under ``zodbsession serve`` the server's database is used
    and the application's is never opened). ``ZODBSESSION_URI`` is read then
    too, so a test may set it after importing the application.
    """

    def __init__(self, app: Flask, db: DB | None, manager: SessionManager | None,
                 cookie: CookiePolicy | None, publisher_options: dict[str, Any]) -> None:
        config = app.config
        self._config = config
        _uri(config)  # checked now; read again when the database is opened
        self._db = db
        self._owns_db = False  # True once opened from ZODBSESSION_URI: ours to close
        self.manager = manager if manager is not None else _manager_from(config)
        self.cookie = cookie if cookie is not None else cookie_policy_from(config)
        self._fixed_cookie = cookie is not None
        self._cookie_settings = _cookie_settings(config)  # what self.cookie was made from
        self.janitor_interval = _seconds(config, "ZODBSESSION_JANITOR_INTERVAL", 60.0)
        self.janitor: Janitor | None = None  # started with the publisher
        options = dict(publisher_options)
        if "ZODBSESSION_RETRY_ATTEMPTS" in config:
            options.setdefault("retry_attempts", _positive_int(config, "ZODBSESSION_RETRY_ATTEMPTS"))
        self.publisher_options = options
        self.wsgi_app: Any = None  # Flask's own wsgi_app, set by init_app
        self._app = app
        self._publisher: SessionPublisher | None = None
        self._lock = threading.Lock()

    def server_settings(self) -> dict[str, tuple[Any, str]]:
        """What a server that wraps this app itself (``zodbsession serve``) must use to match the extension.

        ``{"section.field": (value, where the app says it)}``: the database
        of ``ZODBSESSION_URI``, the cookie of ``SESSION_COOKIE_*`` and the
        timeouts the configuration sets, so that the app keeps one cookie
        name and one database under any server; the server says at start-up
        which of its settings these replace.
        """
        wanted: dict[str, tuple[Any, str]] = {}
        uri = _uri(self._config)
        if uri:
            wanted["storage.uri"] = (uri, "ZODBSESSION_URI")
            wanted["storage.sessions_uri"] = ("", "ZODBSESSION_URI")
        cookie = self.cookie
        for name in ("name", "path", "domain", "secure", "httponly", "samesite"):
            value = getattr(cookie, name)
            wanted[f"cookie.{name}"] = ("" if value is None else value, f"SESSION_COOKIE_{name.upper()}")
        if any(key in self._config for key, _field in _TIMEOUT_KEYS):
            for name in ("idle_timeout", "max_lifetime", "access_resolution"):
                wanted[f"sessions.{name}"] = (getattr(self.manager, name), f"ZODBSESSION_{name.upper()}")
        return wanted

    def get_db(self) -> DB:
        """The extension's database, opened from ``ZODBSESSION_URI`` on first use."""
        if self._db is None:
            with self._lock:
                if self._db is None:
                    uri = _uri(self._config)
                    if not uri:
                        raise ConfigError("ZODBSESSION_URI", "is not set and no db was given: set "
                                          "app.config['ZODBSESSION_URI'] (e.g. 'file://var/Data.fs' "
                                          "or 'memory://') or pass ZODBSession(app, db=...)")
                    from zodbsession.core.db import open_db

                    self._db = open_db(uri)
                    self._owns_db = True
        return self._db

    def current_cookie(self) -> CookiePolicy:
        """The cookie policy of the configuration as it is now: Flask reads ``SESSION_COOKIE_*`` each request.

        Made again (and checked, raising ``ConfigError`` naming the key) only
        when those settings changed; the cookie's name stays the one read at
        ``init_app``, which the publisher reads requests' cookies by. A
        policy passed to ``ZODBSession(cookie=...)`` is used as it is.
        """
        if self._fixed_cookie:
            return self.cookie
        settings = _cookie_settings(self._config)
        if settings != self._cookie_settings:
            policy = cookie_policy_from(self._config)
            if policy.name != self.cookie.name:
                raise ConfigError("SESSION_COOKIE_NAME", f"changed from {self.cookie.name!r} to "
                                  f"{policy.name!r} after init_app: the extension reads requests' "
                                  "cookies by the name it was installed with; set it before")
            self.cookie, self._cookie_settings = policy, settings
        return self.cookie

    def close(self) -> None:
        """Stop the janitor; close the database if it was opened from ``ZODBSESSION_URI``.

        A database passed in is the caller's to close. The next request starts afresh.
        """
        with self._lock:
            if self.janitor is not None:
                self.janitor.stop()
                self.janitor = None
                self._publisher = None
            if self._owns_db and self._db is not None:
                self._db.close()
                self._db = None
                self._publisher = None
                self._owns_db = False

    def propagate_exceptions(self) -> bool:
        """Flask's rule: ``PROPAGATE_EXCEPTIONS``, else when testing or debugging."""
        propagate = self._config.get("PROPAGATE_EXCEPTIONS")
        return bool(self._app.testing or self._app.debug) if propagate is None else bool(propagate)

    def get_publisher(self) -> SessionPublisher:
        """The publisher around Flask's ``wsgi_app``, made (and the janitor started) on first use."""
        if self._publisher is None:
            db = self.get_db()
            with self._lock:
                if self._publisher is None:
                    self._publisher = SessionPublisher(
                        _RaiseTransient(self.wsgi_app), db, manager=self.manager, cookie=self.cookie,
                        **self.publisher_options)
                    # Expiry nobody schedules does not happen: with its own
                    # publisher the extension sweeps, as zodbsession serve does.
                    self.janitor = Janitor(db, self.manager, interval=self.janitor_interval).start()
        return self._publisher


class _RaiseTransient:
    """Between the publisher and Flask: a conflict Flask answered with a 500 is raised again.

    Flask turns any exception of a view into a 500 page (unless
    ``PROPAGATE_EXCEPTIONS``); a ``TransientError`` must instead reach the
    publisher, which retries the request.
    """

    def __init__(self, wsgi_app: WSGIApp) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        report = environ.get(REPORT_KEY)
        if report is not None:
            report.reset()  # a new attempt decides afresh
        body = self.wsgi_app(environ, start_response)
        exc = environ.pop(_TRANSIENT, None)
        if exc is not None:
            close = getattr(body, "close", None)
            if close is not None:
                close()
            raise exc
        return body


class _Front:
    """``app.wsgi_app``: our publisher around Flask, or Flask alone inside another publisher."""

    def __init__(self, state: ExtensionState) -> None:
        self.state = state

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if "zodbsession.session" in environ:
            # Already inside a publisher (zodbsession serve): join its transaction.
            return _RaiseTransient(self.state.wsgi_app)(environ, start_response)
        report = environ[REPORT_KEY] = AttemptReport()
        policy = self.state.current_cookie()  # a bad SESSION_COOKIE_* fails the request, naming it
        https = environ.get("wsgi.url_scheme") == "https"
        propagate = self.state.propagate_exceptions()

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            # Called by the publisher once it has committed or aborted.
            if propagate and report.error is not None:
                # As Flask does under TESTING or debug (its test client, the
                # debugger), now that the transaction has been aborted.
                raise report.error
            headers = [_flask_session_cookie(header, policy, https, report.max_age) for header in headers]
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return self.state.get_publisher()(environ, start)


def _flask_session_cookie(header: tuple[str, str], policy: CookiePolicy, https: bool,
                          max_age: int | None) -> tuple[str, str]:
    """A session ``Set-Cookie`` (the publisher's or ``save_session``'s) as Flask's settings now ask.

    The same id (or the same deletion), with *policy*'s attributes; a
    permanent session's *max_age*, else the ``Max-Age`` it had (a session's
    own ``set_expiry``).
    """
    key, value = header
    if key.lower() != "set-cookie" or not value.startswith(f"{policy.name}="):
        return header
    head, *attributes = value.split(";")
    session_id = head[len(policy.name) + 1:].strip()
    if not session_id:
        return policy.delete_header(https=https)
    if max_age is None:
        for attribute in attributes:
            name, _, number = attribute.strip().partition("=")
            if name.lower() == "max-age" and number.isdigit():
                max_age = int(number)
    return flask_cookie(policy, session_id, https, max_age)


class ZODBSession:
    """The Flask extension: ``ZODBSession(app, db=None)`` or ``ext.init_app(app)`` later.

    *db* is the ZODB database holding the sessions and the application's own
    objects; without it ``app.config["ZODBSESSION_URI"]`` names one
    (``memory://`` for tests), opened on the first request. *manager* and
    *cookie* replace the ones built from the configuration; further keyword
    arguments go to ``SessionPublisher`` (``retry_attempts``, ``commit_veto``...).

    Configuration read by ``init_app`` (``ZODBSESSION_URI`` is only checked
    then, and read when the database is opened): ``ZODBSESSION_IDLE_TIMEOUT``, ``ZODBSESSION_MAX_LIFETIME``,
    ``ZODBSESSION_RETRY_ATTEMPTS``, ``ZODBSESSION_JANITOR_INTERVAL`` (seconds
    between the expiry sweeps of the janitor started with the extension's own
    publisher; 0: none), and Flask's ``SESSION_COOKIE_NAME``,
    ``_DOMAIN``, ``_PATH`` (else ``APPLICATION_ROOT``), ``_HTTPONLY``,
    ``_SECURE`` (False means "when the request is HTTPS"), ``_SAMESITE``
    (None: no ``SameSite`` attribute, as Flask; ``"None"`` needs ``_SECURE``)
    and ``_PARTITIONED`` (needs ``_SECURE``), ``SESSION_REFRESH_EACH_REQUEST``
    and ``PERMANENT_SESSION_LIFETIME``. The ``SESSION_COOKIE_*`` settings
    are read again on each request, as Flask does (``ExtensionState.current_cookie``),
    but the cookie's name.

    Threading: one extension serves every thread; per-application state is
    in ``app.extensions["zodbsession"]``.
    """

    def __init__(self, app: Flask | None = None, db: DB | None = None, *,
                 manager: SessionManager | None = None, cookie: CookiePolicy | None = None,
                 **publisher_options: Any) -> None:
        self.db = db
        self.manager = manager
        self.cookie = cookie
        self.publisher_options = publisher_options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Install the session interface, the error handlers and the publisher on *app*."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("zodbsession.flask.ZODBSession is already installed on this app")
        state = ExtensionState(app, self.db, self.manager, self.cookie, self.publisher_options)
        app.extensions[EXTENSION_KEY] = state
        app.session_interface = ZODBSessionInterface(state)
        app.register_error_handler(PublishError, _answer_publish_error)
        app.register_error_handler(TransientError, _keep_transient)
        got_request_exception.connect(_on_request_exception, app, weak=False)
        state.wsgi_app = app.wsgi_app
        app.wsgi_app = _Front(state)  # type: ignore[method-assign]

    @property
    def connection(self) -> Connection:
        """The current request's ZODB connection (``zodbsession.flask.connection()``)."""
        return connection()

    @contextlib.contextmanager
    def transaction(self, app: Flask | None = None) -> Iterator[Connection]:
        """One transaction on *app*'s database outside a request: a ``flask`` CLI command, a script.

        Yields the connection; ``connection()`` and ``root()`` work inside the
        block as in a request. Commits when the block ends, aborts when it
        raises. Refused inside a request, which has its transaction already.
        """
        if registry.has():
            raise RuntimeError("ZODBSession.transaction() inside a request: use connection(), "
                               "whose transaction the request commits")
        state = ZODBSession.state(app if app is not None else _unproxied(current_app))
        tm = transaction.TransactionManager(explicit=True)
        conn = state.get_db().open(transaction_manager=tm)
        try:
            tm.begin()
            registry.set(Scope(conn, RequestSession(state.manager, conn, None)))
            yield conn
            commit(tm)
        except BaseException:
            abort_quietly(tm)
            raise
        finally:
            registry.clear()
            conn.close()

    @staticmethod
    def state(app: Flask) -> ExtensionState:
        """The extension's state for *app* (its db, manager, cookie policy)."""
        state: ExtensionState = app.extensions[EXTENSION_KEY]
        return state


def _answer_publish_error(exc: PublishError) -> Response:
    """``raise Redirect(...)`` / ``PublishError`` in a view: its answer, and the request commits."""
    return current_app.response_class(exc.message, status=exc.status, headers=exc.headers,
                                      mimetype="text/plain")


def _keep_transient(exc: TransientError) -> Response:
    """Keep a conflict raised in a view for ``_RaiseTransient``; this 500 is never sent."""
    request.environ[_TRANSIENT] = exc
    return Response("conflict, retrying", status=500, mimetype="text/plain")


def _on_request_exception(sender: Flask, exception: BaseException, **extra: Any) -> None:
    """Flask's ``got_request_exception``: keep a conflict for a retry, anything else for the front."""
    if isinstance(exception, TransientError):
        # Raised outside the view (a hook, save_session): retried as well.
        request.environ[_TRANSIENT] = exception
        return
    report = request.environ.get(REPORT_KEY)
    if report is not None:
        report.error = exception


def _unproxied(proxy: T) -> T:
    """The object behind one of Flask's context proxies (which Flask types as that object)."""
    return cast("LocalProxy[T]", proxy)._get_current_object()


def connection() -> Connection:
    """The ZODB connection of the current request's transaction: the application's data is here.

    ``connection().root()`` is the database root. Raises ``NoActiveRequest``
    outside a request.
    """
    if registry.has():
        return registry.connection
    if has_request_context():
        session = _unproxied(flask_session)
        if isinstance(session, FlaskSession) and session._opener is not None:
            # Outside a publisher (a test_request_context): the session's own
            # connection, opened now if need be.
            session.request_session  # noqa: B018 (opens it)
            if session._own is not None and session._own.connection is not None:
                return session._own.connection
    raise NoActiveRequest("zodbsession.flask.connection() needs a request running under "
                          "ZODBSession (or zodbsession serve)")


def root() -> Any:
    """The database root of the current request's connection."""
    return connection().root()


#: The Flask settings a ``CookiePolicy`` attribute comes from, to name them in an error.
_COOKIE_KEYS = {"name": "SESSION_COOKIE_NAME", "path": "SESSION_COOKIE_PATH",
                "domain": "SESSION_COOKIE_DOMAIN", "secure": "SESSION_COOKIE_SECURE",
                "httponly": "SESSION_COOKIE_HTTPONLY", "samesite": "SESSION_COOKIE_SAMESITE",
                "partitioned": "SESSION_COOKIE_PARTITIONED"}


def _cookie_settings(config: Any) -> tuple[Any, ...]:
    return tuple(config.get(key) for key in (*_COOKIE_KEYS.values(), "APPLICATION_ROOT"))


def cookie_policy_from(config: Any) -> CookiePolicy:
    """The cookie policy Flask's ``SESSION_COOKIE_*`` settings ask for; ``ConfigError`` names a bad one.

    As Flask: ``SESSION_COOKIE_SAMESITE`` None sends no ``SameSite``
    attribute, ``"Lax"``, ``"Strict"`` or ``"None"`` (any case) that one;
    ``"None"`` and ``SESSION_COOKIE_PARTITIONED`` need
    ``SESSION_COOKIE_SECURE``, or browsers drop the cookie.
    """
    samesite = config.get("SESSION_COOKIE_SAMESITE")
    if samesite is not None:
        if not isinstance(samesite, str) or samesite.title() not in ("Lax", "Strict", "None"):
            raise ConfigError("SESSION_COOKIE_SAMESITE", f"must be 'Lax', 'Strict', 'None' or None, "
                              f"not {samesite!r}")
        samesite = samesite.title()
    try:
        return CookiePolicy(
            name=config.get("SESSION_COOKIE_NAME") or "session",
            path=config.get("SESSION_COOKIE_PATH") or config.get("APPLICATION_ROOT") or "/",
            # RFC 6265 ignores a leading dot (werkzeug drops it too, and its test client needs that)
            domain=(config.get("SESSION_COOKIE_DOMAIN") or "").lstrip(".") or None,
            secure=True if config.get("SESSION_COOKIE_SECURE") else "auto",
            httponly=bool(config.get("SESSION_COOKIE_HTTPONLY", True)),
            samesite=samesite,
            max_age=None,  # a browser-session cookie unless session.permanent
            partitioned=bool(config.get("SESSION_COOKIE_PARTITIONED", False)),
        )
    except ConfigError as exc:  # named by the policy's attribute: name it by the Flask key
        raise ConfigError(_COOKIE_KEYS.get(exc.key, "SESSION_COOKIE_*"), exc.problem) from None


class _ManagerOptions(TypedDict, total=False):
    """The ``SessionManager`` fields a Flask configuration sets."""

    idle_timeout: float
    max_lifetime: float
    access_resolution: float


_TIMEOUT_KEYS: tuple[tuple[str, Literal["idle_timeout", "max_lifetime"]], ...] = (
    ("ZODBSESSION_IDLE_TIMEOUT", "idle_timeout"), ("ZODBSESSION_MAX_LIFETIME", "max_lifetime"))


def _manager_from(config: Any) -> SessionManager:
    options: _ManagerOptions = {}
    for key, field_name in _TIMEOUT_KEYS:
        if key in config:
            value = config[key]
            if isinstance(value, timedelta):
                value = value.total_seconds()
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(key, f"must be a number of seconds, not {value!r}")
            options[field_name] = float(value)
    if "idle_timeout" in options:
        if "max_lifetime" not in options:
            options["max_lifetime"] = max(options["idle_timeout"], SessionManager.max_lifetime)
        # A short idle timeout needs its access times recorded more often.
        options["access_resolution"] = min(SessionManager.access_resolution, options["idle_timeout"] / 10)
    try:
        return SessionManager(**options)
    except ConfigError as exc:  # named by its field: name it by the Flask key instead
        raise ConfigError(f"ZODBSESSION_{exc.key.upper()}", exc.problem) from None


def _uri(config: Any) -> str | None:
    uri = config.get("ZODBSESSION_URI")
    if uri is not None and not isinstance(uri, str):
        raise ConfigError("ZODBSESSION_URI", f"must be a storage URI string, not {uri!r}")
    return uri


def _seconds(config: Any, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(key, f"must be a number of seconds, 0 or more, not {value!r}")
    return float(value)


def _positive_int(config: Any, key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(key, f"must be a whole number of at least 1, not {value!r}")
    return value
