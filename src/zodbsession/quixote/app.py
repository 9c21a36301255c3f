"""``make_app``: a Quixote application as a WSGI application, one ZODB transaction per request.

The stack, outside in: zodbsession's ``SessionPublisher`` (the connection,
the transaction, its commit or abort, conflicts retried with the body
replayed, the session cookie), then Quixote's request and response around a
``ThreadSafePublisher`` (one current request per thread), whose
``ZODBSessionManager`` hands views their session. What Quixote's hooks
decide is what the publisher does: ``commit_changes`` (success, or any
Quixote ``PublishError``: ``AccessError`` 403, ``TraversalError`` 404, a
redirect) commits, ``abort_changes`` (any other exception, Quixote's 500
page) aborts, whatever the status.

Under ``zodbsession serve --app`` the server's own publisher already runs
each request: the application sees ``environ["zodbsession.session"]`` and
joins that transaction instead of opening a second one. The app's cookie
(Quixote's ``session_cookie_*``) and a database URI given to ``make_app``
replace the server's (``server_settings``, one start-up line says so), so
that moving the app between servers logs nobody out; the server's session
timeouts apply, and its commit veto
(a 5xx aborts, anything else commits), which agrees with Quixote's hooks
except for a view that returns a 5xx without raising.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import quixote
from quixote.config import Config
from quixote.http_request import HTTPRequest
from ZODB import DB

from zodbsession import ConfigError, CookiePolicy, SessionManager, SessionPublisher, open_db
from zodbsession.quixote.manager import ZODBSessionManager, decision_of
from zodbsession.quixote.publisher import ThreadSafePublisher

StartResponse = Callable[..., Any]
Headers = list[tuple[str, str]]
CommitVeto = Callable[[Any, str, Headers], bool]

__all__ = ["QuixoteApp", "QuixoteWSGI", "cookie_policy_from", "make_app", "quixote_commit_veto"]


class QuixoteWSGI:
    """Quixote's WSGI wrapper (``quixote.wsgi.QWIP``), for a publisher that is thread-safe.

    Threading: any number of threads may call it at once; the publisher
    keeps each one's request apart.
    """

    def __init__(self, publisher: ThreadSafePublisher) -> None:
        self.publisher = publisher

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        environ.setdefault("REQUEST_URI", environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""))
        request = HTTPRequest(environ["wsgi.input"], environ)
        response = self.publisher.process_request(request)
        # Quixote allows chunked framing for HTTP/1.1 bodies of unknown length;
        # under WSGI the server frames the body, and Transfer-Encoding (a
        # hop-by-hop header) is refused by servers such as waitress.
        response._allow_chunked = False
        start_response(f"{response.status_code:03d} {response.reason_phrase}", response.generate_headers())
        body: Iterable[bytes] = response.generate_body_chunks()
        return body


def quixote_commit_veto(then: CommitVeto | None = None) -> CommitVeto:
    """The commit veto that follows Quixote's hooks: abort unless ``commit_changes`` ran last.

    *then*, a veto of the application's own, may still abort what Quixote
    would commit.
    """

    def veto(environ: Any, status: str, headers: Headers) -> bool:
        if decision_of(environ) != "commit":
            return True
        return then(environ, status, headers) if then is not None else False

    return veto


def cookie_policy_from(config: Config) -> CookiePolicy:
    """The session cookie Quixote's configuration asks for, under zodbsession's rules.

    ``SESSION_COOKIE_NAME``, ``_DOMAIN`` and ``_PATH`` (default ``/``) are
    taken; ``SESSION_COOKIE_SECURE = False`` means Secure when the request
    came over HTTPS; the cookie is always HttpOnly and ``SameSite=Lax``.
    """
    return CookiePolicy(name=config.session_cookie_name, path=config.session_cookie_path or "/",
                        domain=config.session_cookie_domain,
                        secure=True if config.session_cookie_secure else "auto")


class QuixoteApp:
    """The WSGI application ``make_app`` returns: the publisher around Quixote, or Quixote joining one.

    Threading: one instance serves every thread of a server (waitress with
    any number of threads). A database named by URI is opened on the first
    request that needs it, under a lock, and never under ``zodbsession
    serve``, whose database is used. ``close()`` closes that database and
    forgets Quixote's process-wide publisher, so another app can be made.
    """

    def __init__(self, publisher: ThreadSafePublisher, db: DB | str | None,
                 session_manager: ZODBSessionManager, publisher_options: dict[str, Any]) -> None:
        self.quixote_publisher = publisher
        self.session_manager = session_manager
        self.wsgi = QuixoteWSGI(publisher)
        self.publisher_options = publisher_options
        self._db = db if isinstance(db, DB) else None
        self._uri = db if isinstance(db, str) else None
        self._owns_db = False
        self._publisher: SessionPublisher | None = None
        self._lock = threading.Lock()
        #: Whether the cookie is Quixote's ``session_cookie_*`` (not ``make_app(cookie=...)``).
        self.cookie_from_config = True

    def server_settings(self) -> dict[str, tuple[Any, str]]:
        """What ``zodbsession serve``, which wraps this app itself, must use to match ``make_app``.

        ``{"section.field": (value, where the app says it)}``: the database of
        a URI given to ``make_app`` and the cookie of Quixote's
        ``session_cookie_*`` settings (or of ``cookie=``), so that the app has
        one cookie name and one database under ``serve`` and under any other
        server; ``serve`` says at start-up which of its settings these replace.
        """
        wanted: dict[str, tuple[Any, str]] = {}
        if self._uri:
            wanted["storage.uri"] = (self._uri, "make_app's db")
            wanted["storage.sessions_uri"] = ("", "make_app's db")
        cookie: CookiePolicy = self.publisher_options["cookie"]
        for name in ("name", "path", "domain", "secure", "httponly", "samesite"):
            value = getattr(cookie, name)
            source = (f"Quixote's session_cookie_{name}" if self.cookie_from_config
                      else f"make_app's cookie.{name}")
            wanted[f"cookie.{name}"] = ("" if value is None else value, source)
        return wanted

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if "zodbsession.session" in environ:
            # Already inside a publisher (zodbsession serve): join its transaction.
            return self.wsgi(environ, start_response)
        return self.get_publisher()(environ, start_response)

    def get_publisher(self) -> SessionPublisher:
        """The ``SessionPublisher`` around Quixote, made (and its database opened) on first use."""
        publisher = self._publisher
        if publisher is None:
            with self._lock:
                publisher = self._publisher
                if publisher is None:
                    publisher = self._publisher = SessionPublisher(
                        self.wsgi, self._get_db(), manager=self.session_manager.manager,
                        **self.publisher_options)
        return publisher

    def _get_db(self) -> DB:
        if self._db is None:
            if self._uri is None:
                raise ConfigError("db", "is None, so this Quixote app runs only inside zodbsession serve; "
                                  "to serve it otherwise give make_app a DB or a storage URI "
                                  "(e.g. 'file://var/Data.fs')")
            self._db = open_db(self._uri)
            self._owns_db = True
        return self._db

    def close(self) -> None:
        """Close a database opened from a URI; forget Quixote's process-wide publisher if it is ours.

        A database passed in is the caller's to close.
        """
        with self._lock:
            if self._owns_db and self._db is not None:
                self._db.close()
                self._db = None
                self._owns_db = False
            self._publisher = None
        if quixote.get_publisher() is self.quixote_publisher:
            quixote.cleanup()


def make_app(root_directory: Any, db: DB | str | None, *,
             manager: ZODBSessionManager | SessionManager | None = None,
             config: Config | None = None, logger: Any = None,
             **publisher_options: Any) -> QuixoteApp:
    """A thread-safe WSGI application serving *root_directory* (a Quixote ``Directory``) with ZODB sessions.

    *db* is the database holding the sessions and the application's own
    objects: a ``DB``, a storage URI opened on the first request
    (``"file://var/Data.fs"``), or None for an application only ever served
    by ``zodbsession serve``. *manager* is a ``ZODBSessionManager`` (to pick
    the session class, or a subclass with Quixote 2-era hooks) or
    zodbsession's ``SessionManager`` (timeouts, limits), wrapped in one.
    *config* and *logger* are Quixote's (``Config(display_exceptions=...)``);
    the session cookie follows its ``session_cookie_*`` settings unless
    ``cookie=`` is given. Further keyword arguments go to
    ``SessionPublisher`` (``retry_attempts``, ``commit_veto``...).

    Makes Quixote's one publisher of the process: a second ``make_app``
    raises ``RuntimeError`` until the first app is ``close()``\\ d.
    """
    existing = quixote.get_publisher()
    if existing is not None:
        raise RuntimeError(f"Quixote allows one Publisher per process and {existing!r} exists: "
                           "close() the app made before (or call quixote.cleanup())")
    if not isinstance(manager, ZODBSessionManager):
        manager = ZODBSessionManager(manager=manager)
    publisher = ThreadSafePublisher(root_directory, session_manager=manager, config=config, logger=logger)
    options = dict(publisher_options)
    cookie_given = "cookie" in options
    options.setdefault("cookie", cookie_policy_from(publisher.config))
    options["commit_veto"] = quixote_commit_veto(options.get("commit_veto"))
    app = QuixoteApp(publisher, db, manager, options)
    app.cookie_from_config = not cookie_given
    if isinstance(db, DB):
        app.get_publisher()  # a database at hand: fail now, not on the first request
    return app
