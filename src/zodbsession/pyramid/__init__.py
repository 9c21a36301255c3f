"""zodbsession for Pyramid: ``config.include("zodbsession.pyramid")``.

This module owns the Pyramid front door: it reads the ``zodbsession.*``
settings of the ini file, gives every request a ``request.session`` that
provides Pyramid's ``ISession``, stores it through the request's ZODB
connection joined to ``request.tm`` (pyramid_tm's transaction), and sends the
session cookie from a response callback once the transaction has committed.
pyramid_tm ends the transaction and pyramid_retry retries conflicts; no
``SessionPublisher`` is involved, so one transaction manager manages each
request. ``settings`` reads the ini keys and holds what they set up,
``session`` is ``request.session`` and its cookie; this module wires them
into Pyramid (the include, the session factory, the serializing tween).

What a request's end does to the session, and what the client is told:

================================  ================================  ======================
pyramid_tm ends the request with  the session (and the app's data)  ``Set-Cookie``
================================  ================================  ======================
commit                            stored with the app's changes     as the session asks
abort (exception, doom, veto)     rolled back with them             none: cookie as it was
a conflict (``TransientError``)   rolled back; pyramid_retry        that of the attempt
                                  replays with a fresh request      that commits
================================  ================================  ======================

"As the session asks" is ``RequestSession.cookie_to_send()`` as it stood just
before the commit: a new id (a stored new session, ``login``, ``rotate``),
a deletion (``invalidate`` without a new session) or nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pyramid.config import Configurator
from pyramid.events import ApplicationCreated
from pyramid.request import Request
from pyramid.response import Response
from pyramid_retry import IBeforeRetry
from ZODB.Connection import Connection

from zodbsession.core.errors import ConfigError, SessionBusy, SessionWaitTimeout
from zodbsession.core.locks import takes_turn
from zodbsession.core.registry import Scope
from zodbsession.core.registry import registry as scoped_registry
from zodbsession.core.request_session import RequestSession
from zodbsession.pyramid.report import report_retry
from zodbsession.pyramid.session import CookieDecision, PyramidSession
from zodbsession.pyramid.settings import (
    DATABASE_KEY,
    INI_KEYS,
    PREFIX,
    ZodbSessions,
    settings_from_pyramid,
)
from zodbsession.web.cookies import session_cookie_ids

if TYPE_CHECKING:
    from pyramid.router import Router

    from zodbsession.testing.clients import WSGIClient

__all__ = [
    "DATABASE_KEY",
    "INI_KEYS",
    "PREFIX",
    "PyramidSession",
    "ZodbSessions",
    "get_connection",
    "includeme",
    "make_client",
    "serialize_tween_factory",
    "session_factory",
    "settings_from_pyramid",
]

log = logging.getLogger(__name__)


def get_connection(request: Request) -> Connection:
    """The ZODB connection ``request.session`` is stored through, joined to ``request.tm``.

    pyramid_zodbconn's when it is configured (the same as
    ``pyramid_zodbconn.get_connection(request)``), else the one zodbsession
    opens on its own database for this request; the app's own persistent
    objects changed through it commit or abort with the session. Closed when
    the request is finished.
    """
    return request.registry.zodbsession.connection(request)


def make_client(app: Router) -> WSGIClient:
    """A ``zodbsession.testing`` client (one browser, in process) for a Pyramid app using this include.

    Its requests go to *app* itself, and its ``session``, ``session_transaction()``,
    ``login()`` and ``logout()`` reach the session its cookie names, in the
    app's database: set a test's session up without a request for it.
    """
    from zodbsession.testing.clients import WSGIClient

    sessions: ZodbSessions = app.registry.zodbsession
    return WSGIClient(app, sessions.db, sessions.manager, sessions.cookie)


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
                          "transaction: before it began (a NewRequest subscriber, a tween over "
                          "pyramid_tm), after it ended (a NewResponse subscriber, a response "
                          "callback), or in a request tm.activate_hook excluded; there the session "
                          "would never be committed")
    connection = sessions.connection(request)
    # Every well-formed id of the cookie's name, first first: a stale cookie
    # for a parent path must not hide the live one.
    ids = session_cookie_ids(request.environ.get("HTTP_COOKIE"), sessions.cookie.name)
    request_session = RequestSession(sessions.manager, connection, ids[0] if ids else None,
                                     more_ids=ids[1:])
    tm = request.tm
    decision = CookieDecision(sessions, request_session, tm)
    tm.registerSynch(decision)  # attaches to the current transaction too
    request.add_response_callback(decision.set_cookie)
    # outer: the scope's hooks go to pyramid_tm's transaction, which pyramid_tm ends.
    scoped_registry.set(Scope(connection, request_session, request.environ, outer=True))

    def finished(_request: Request) -> None:
        scoped_registry.clear()
        with contextlib.suppress(KeyError):
            tm.unregisterSynch(decision)

    request.add_finished_callback(finished)
    return PyramidSession(request_session, decision)


def serialize_tween_factory(handler: Callable[[Request], Response], registry: Any
                            ) -> Callable[[Request], Response]:
    """A tween over pyramid_tm: one session's writes, one at a time in this process.

    Parallel writes to one session (a page firing several calls) would
    otherwise conflict with each other and be retried, or fail after the last
    retry. Reads (a first attempt with a safe method) run side by side, as on
    the front doors (``locks.takes_turn``). Each other attempt (pyramid_retry
    numbers them) holds the lock of the id its cookie names, from
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
        attempt = int(request.environ.get("retry.attempt", 0)) + 1  # pyramid_retry counts from 0
        if not ids or locks is None or not takes_turn(request.method, attempt):
            return handler(request)
        try:
            with locks.hold(ids[0]):
                return handler(request)
        except SessionBusy as exc:
            log.warning("%s %s: refused: %s", request.method, request.path_info, exc)
            timed_out = isinstance(exc, SessionWaitTimeout)
            request.environ["zodbsession.refused"] = "session_wait_timeout" if timed_out else "session_busy"
            return Response("this session is busy, please retry", content_type="text/plain",
                            status=503 if timed_out else 429,
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
    config.add_tween("zodbsession.pyramid.report.report_tween_factory",
                     over="zodbsession.pyramid.serialize_tween_factory")
    config.add_subscriber(report_retry, IBeforeRetry)
    config.action("zodbsession.pyramid", sessions.open, args=(config.registry,), order=100)
    config.add_subscriber(lambda _event: sessions.start_janitor(), ApplicationCreated)
